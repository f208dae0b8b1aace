// The viewer's state in one place: the results root that is loaded, the pair shown, the hovered
// neuron and the view controls. The URL mirrors the view (readUrl / writeUrl), so a link reopens
// the same view; everything that changes the state goes through this object.
import type { ClassInfo, Manifest, NeuronAssets, NodeRow, PairData, PairRow } from "./data";
import type { ViewState } from "./graph";
import type { Criterion } from "./highlight";
import { CRITERIA } from "./highlight";

export class AppStore {
  /** the results root (resolved from ?root=, or the page's own folder) */
  root = "";
  manifest!: Manifest;
  classes: ClassInfo[] = [];
  names = new Map<number, string>();
  original: number | null = null;
  target: number | null = null;
  pairRow: PairRow | null = null;
  pairData: PairData | null = null;
  assets: Map<string, NeuronAssets> | null = null;
  /** the hovered neuron whose asset index read failed (the next hover tries again) */
  assetsFailedFor: NodeRow | null = null;
  hoveredNode: NodeRow | null = null;
  hoverAnchor: DOMRect | null = null;
  /** bumped by every pair or original load: an answer for an older token is dropped */
  loadToken = 0;
  readonly view: ViewState = {
    s: 2,
    criterion: "activated",
    neuronPct: 20,
    edgePct: 30,
    filter: "full",
    pins: new Set(),
    compare: false,
    weaker: 1,
    stronger: 9,
    compareEdges: "stronger",
    effectRings: false,
  };

  /** `rootParam`: the page's ?root= (kept in every URL written) */
  constructor(readonly rootParam: string | null) {}

  /** Strength values by index: 0 (benign), then the manifest's strengths. */
  strengthValues(): number[] {
    return [0, ...this.manifest.strengths];
  }

  /** The strength index (from `from` on) nearest to the value `v`. */
  nearestIndex(v: number, from = 0): number {
    const vals = this.strengthValues();
    let best = from;
    for (let i = from; i < vals.length; i++) if (Math.abs(vals[i] - v) < Math.abs(vals[best] - v)) best = i;
    return best;
  }

  /** Read the pair and the view from the URL's query (invalid values keep the defaults). */
  readUrl(search: string): void {
    const q = new URLSearchParams(search);
    const view = this.view;
    const S = this.manifest.strengths.length;
    const int = (k: string) => (q.has(k) && /^\d+$/.test(q.get(k)!) ? Number(q.get(k)) : null);
    this.original = int("original");
    this.target = int("target");
    if (q.has("eps")) {
      const e = Number(q.get("eps"));
      if (Number.isFinite(e)) view.s = this.nearestIndex(e);
    }
    const hl = q.get("highlight");
    if (hl && (CRITERIA as string[]).includes(hl)) view.criterion = hl as Criterion;
    const pct = (k: string, d: number) => {
      const v = Number(q.get(k));
      return q.has(k) && Number.isFinite(v) ? Math.max(5, Math.min(100, Math.round(v / 5) * 5)) : d;
    };
    view.neuronPct = pct("neurons", view.neuronPct);
    view.edgePct = pct("edges", view.edgePct);
    const f = q.get("filter");
    if (f === "full" || f === "pinned" || f === "highlighted") view.filter = f;
    view.pins = new Set((q.get("pins") ?? "").split(",").filter((x) => /^[\w.]+-\d+$/.test(x)));
    const cmp = q.get("compare");
    if (cmp) {
      const [w, s] = cmp.split(",").map(Number);
      if (Number.isFinite(w) && Number.isFinite(s)) {
        view.compare = true;
        view.weaker = Math.min(this.nearestIndex(w, 1), S - 1 || 1);
        view.stronger = Math.max(this.nearestIndex(s, 1), Math.min(view.weaker + 1, S));
      }
    }
    const ce = q.get("compare_edges");
    if (ce === "weaker" || ce === "stronger") view.compareEdges = ce;
    view.effectRings = q.get("rings") === "effect";
  }

  /** Write the pair and the view into the URL (replacing the history entry). */
  writeUrl(): void {
    const view = this.view;
    const q = new URLSearchParams();
    if (this.rootParam) q.set("root", this.rootParam);
    if (this.original !== null) q.set("original", String(this.original));
    if (this.target !== null) q.set("target", String(this.target));
    const vals = this.strengthValues();
    q.set("eps", String(vals[view.s]));
    q.set("highlight", view.criterion);
    q.set("neurons", String(view.neuronPct));
    q.set("edges", String(view.edgePct));
    if (view.filter !== "full") q.set("filter", view.filter);
    if (view.pins.size) q.set("pins", [...view.pins].sort().join(","));
    if (view.compare) {
      q.set("compare", `${vals[view.weaker]},${vals[view.stronger]}`);
      q.set("compare_edges", view.compareEdges);
    }
    if (view.effectRings) q.set("rings", "effect");
    history.replaceState(null, "", `${window.location.pathname}?${q.toString()}`);
  }
}
