// The causal panel: what activation patching (docs/FORMAT.md causal/, causal_curve/) measured for the
// chosen pair at the chosen strength, in plain words and only what the numbers show. A sentence for
// the "all" row (every exploited neuron patched at once, against random sets of the same size), a
// table per layer, and the dose-response curve of one layer. Everything is set with textContent:
// class names and layer names are data.
import type { CausalData, CausalRow, CurveRow, PairRow } from "./data";

/** "14%": a recovery as a whole percentage (recoveries can be negative or above 1). */
export const pct = (v: number) => (Number.isFinite(v) ? `${Math.round(100 * v)}%` : "—");
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

/** The verdict of a percentile among the null draws, computed from the number alone. */
export function verdict(percentile: number): string {
  if (!Number.isFinite(percentile)) return "no null control";
  if (percentile >= 95) return "more than chance";
  if (percentile <= 5) return "less than chance";
  return "no more than chance";
}

/** The primary (exploited) row of a layer (or "all") at strength index i (0-based). */
export function exploitedRow(rows: CausalRow[], layer: string, i: number): CausalRow | undefined {
  return rows.find((r) => r.layer === layer && r.strength === i && r.set === "exploited");
}

/**
 * The panel's sentence for the pair at strength index s (0 = benign, i = strengths[i-1]).
 * `all`: the pair's causal row "all"/"exploited" at that strength (undefined when none).
 */
export function causalSentence(all: CausalRow | undefined, pair: PairRow, strengths: number[], s: number): string {
  if (s === 0)
    return "Strength 0 shows benign images: patching needs a successful attack. Move the strength slider right to see what patching the exploited neurons does.";
  const e = `eps ${strengths[s - 1].toFixed(2)}`;
  if (!(pair.nImages > 0)) return "No image of the original class is classified correctly, so nothing was attacked or patched.";
  const nS = pair.nSuccess[s - 1];
  if (!(nS > 0)) return `No attack succeeded at ${e}: there is nothing to patch.`;
  if (!all || !Number.isFinite(all.recovery))
    return `No patching result at ${e}: too few successful attacks to select neurons on one half and patch the other, or no exploited neuron selected.`;
  const n = all.nNeurons;
  const these = n === 1 ? "this neuron" : `these ${n} neurons`;
  return (
    `Patching the ${plural(n, "exploited neuron")} (all layers; selected on other images) in ` +
    `${plural(all.nImages, "held-out attacked image")} at ${e} recovers ${pct(all.recovery)} of the logit gap; ` +
    `random sets of ${n} recover ${pct(all.nullMean)} (percentile ${Math.round(all.nullPercentile)}: ${verdict(all.nullPercentile)}). ` +
    `Put into the clean images, the attacked values of ${these} close ${pct(all.noising)} of the gap; random sets ${pct(all.noisingNullMean)} ` +
    `(percentile ${Math.round(all.noisingPercentile)}: ${verdict(all.noisingPercentile)}).`
  );
}

export interface CausalView {
  s: number;
  compare: boolean;
  weaker: number;
  stronger: number;
}

const SVG = "http://www.w3.org/2000/svg";
const ORDER_LABEL: Record<string, string> = { exploited: "exploited rank", delta: "|Δa| rank", random: "random (mean, 5–95 % band)" };

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>): SVGElementTagNameMap[K] {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

export class CausalPanel {
  private note: HTMLElement;
  private body: HTMLElement;
  private text: HTMLElement;
  private table: HTMLTableElement;
  private curveBox: HTMLElement;
  private data: CausalData | null = null;
  private layer: string | null = null;

  constructor(private el: HTMLElement) {
    this.note = el.querySelector("#causal-note")!;
    this.body = el.querySelector("#causal-body")!;
    this.text = el.querySelector("#causal-text")!;
    this.table = el.querySelector("#causal-table")!;
    this.curveBox = el.querySelector("#causal-curve")!;
  }

  /** No panel: the run did not patch (manifest causal: false) or the root has no causal files. */
  off(note: string, state: "off" | "missing" | "error"): void {
    this.data = null;
    this.el.dataset.state = state;
    this.note.textContent = note;
    this.note.hidden = false;
    this.body.hidden = true;
  }

  loading(): void {
    this.data = null;
    this.el.dataset.state = "loading";
    this.note.textContent = "Reading the activation-patching results…";
    this.note.hidden = false;
    this.body.hidden = true;
  }

  clear(): void {
    this.data = null;
    this.el.dataset.state = "empty";
    this.note.hidden = true;
    this.body.hidden = true;
  }

  setRows(data: CausalData): void {
    this.data = data;
    this.el.dataset.state = "ready";
    this.note.hidden = true;
    this.body.hidden = false;
  }

  get hasRows(): boolean {
    return this.data !== null;
  }

  render(pair: PairRow | null, strengths: number[], v: CausalView): void {
    if (!pair || !this.data) return;
    const { rows } = this.data;
    const shown = v.compare ? [v.weaker, v.stronger] : [v.s];
    this.text.textContent = "";
    shown.forEach((s, k) => {
      const p = document.createElement("p");
      p.className = "causal-sentence";
      p.dataset.strength = String(s);
      const all = s >= 1 ? exploitedRow(rows, "all", s - 1) : undefined;
      if (all) {
        p.dataset.recovery = String(all.recovery);
        p.dataset.null = String(all.nullMean);
        p.dataset.percentile = String(all.nullPercentile);
      }
      if (v.compare) {
        const b = document.createElement("strong");
        b.textContent = `${k === 0 ? "Weaker" : "Stronger"}, eps ${strengths[s - 1].toFixed(2)}: `;
        p.append(b);
      }
      p.append(document.createTextNode(rows.length ? causalSentence(all, pair, strengths, s) : "No activation-patching results for this pair."));
      this.text.append(p);
    });
    this.renderTable(rows, shown[shown.length - 1]);
    this.renderCurve(strengths, shown[shown.length - 1]);
  }

  /** Per layer at strength s: exploited R, the random sets' mean and band, the percentile, the matched control. */
  private renderTable(rows: CausalRow[], s: number): void {
    const layerRows = s >= 1 ? rows.filter((r) => r.strength === s - 1 && r.set === "exploited") : [];
    const useful = layerRows.length > 0;
    this.table.hidden = !useful;
    this.el.querySelector<HTMLElement>("#causal-table-note")!.hidden = !useful;
    const tbody = this.table.tBodies[0];
    tbody.textContent = "";
    for (const r of layerRows) {
      const tr = document.createElement("tr");
      tr.dataset.layer = r.layer;
      if (r.layer === "all") tr.className = "all";
      const cells: [string, string, string][] = [
        [r.layer === "all" ? "all layers" : r.layer, "layer", ""],
        [`${pct(r.recovery)} (${r.nNeurons})`, "exploited", String(r.recovery)],
        [`${pct(r.nullMean)} [${pct(r.nullQ05)}, ${pct(r.nullQ95)}]`, "null", String(r.nullMean)],
        [`${Math.round(r.nullPercentile)}`, "percentile", String(r.nullPercentile)],
        [pct(r.matchedMean), "matched", String(r.matchedMean)],
      ];
      cells.forEach(([text, cls, value], i) => {
        const td = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) td.setAttribute("scope", "row");
        td.className = `causal-cell ${cls}`;
        if (value) td.dataset.value = value;
        td.textContent = text;
        tr.append(td);
      });
      tr.title = `${plural(r.nImages, "held-out image")}; ${verdict(r.nullPercentile)} (p = ${r.nullP.toFixed(3)} with ${r.draws} random sets)`;
      tbody.append(tr);
    }
  }

  /** The dose-response curve of one layer (a select chooses it) at the shown strength s (1-based;
   * 0: benign), or, where the run stored none there (pathways.curves "one"), at the strength it has. */
  private renderCurve(strengths: number[], s: number): void {
    const all = this.data ? this.data.curves : [];
    this.curveBox.textContent = "";
    const stored = [...new Set(all.map((c) => c.strength))].sort((a, b) => a - b);
    this.curveBox.hidden = stored.length === 0;
    if (!stored.length) return;
    const here = stored.includes(s - 1);
    const at = here ? s - 1 : stored.reduce((best, x) => (Math.abs(x - (s - 1)) < Math.abs(best - (s - 1)) ? x : best));
    const curves = all.filter((c) => c.strength === at);
    const layers = [...new Set(curves.map((c) => c.layer))];
    if (this.layer === null || !layers.includes(this.layer)) this.layer = layers[0];
    const label = document.createElement("label");
    label.textContent = "Dose–response, layer ";
    const select = document.createElement("select");
    select.id = "causal-curve-layer";
    for (const l of layers) {
      const o = document.createElement("option");
      o.value = l;
      o.textContent = l;
      select.append(o);
    }
    select.value = this.layer;
    select.addEventListener("change", () => {
      this.layer = select.value;
      this.renderCurve(strengths, s);
    });
    label.append(select);
    this.curveBox.append(label);
    const mine = curves.filter((c) => c.layer === this.layer);
    const cap = document.createElement("div");
    cap.className = "hint causal-curve-caption";
    cap.dataset.strength = String(at);
    const where = `at eps ${strengths[at].toFixed(2)}`;
    cap.textContent = here
      ? `R after patching the first k channels, ${where}.`
      : `R after patching the first k channels, ${where} (this pair has curves only at ${stored
          .map((x) => `eps ${strengths[x].toFixed(2)}`)
          .join(", ")}).`;
    this.curveBox.append(cap);
    this.curveBox.append(this.plot(mine));
  }

  private plot(curves: CurveRow[]): SVGSVGElement {
    const W = 240, H = 140, L = 30, B = 20, T = 6, R = 8;
    const kMax = Math.max(...curves.flatMap((c) => c.k));
    const vals = curves.flatMap((c) => [...c.recovery, ...c.q05, ...c.q95]).filter(Number.isFinite);
    const lo = Math.min(0, ...vals), hi = Math.max(1, ...vals);
    const x = (k: number) => L + ((W - L - R) * Math.log2(k)) / Math.max(1, Math.log2(kMax));
    const y = (r: number) => T + ((H - T - B) * (hi - r)) / (hi - lo);
    const out = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "causal-curve", role: "img" });
    out.setAttribute("aria-label", "dose-response curves");
    out.append(svg("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), class: "axis" }));
    out.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
    for (const [r, t] of [[0, "0"], [1, "1"]] as [number, string][]) {
      const tx = svg("text", { x: L - 4, y: y(r) + 3, "text-anchor": "end", class: "tick" });
      tx.textContent = t;
      out.append(tx);
    }
    const kx = svg("text", { x: W - R, y: H - 4, "text-anchor": "end", class: "tick" });
    kx.textContent = `k (log) → ${kMax}`;
    out.append(kx);
    for (const c of curves) {
      if (c.order === "random") {
        const up = c.k.map((k, i) => `${x(k)},${y(c.q95[i])}`);
        const down = c.k.map((k, i) => `${x(k)},${y(c.q05[i])}`).reverse();
        out.append(svg("polygon", { points: [...up, ...down].join(" "), class: "band" }));
      }
      const g = svg("g", { class: `curve ${c.order}` });
      g.dataset.order = c.order;
      g.dataset.auc = String(c.auc);
      const title = svg("title", {});
      title.textContent = `${ORDER_LABEL[c.order] ?? c.order}: area ${c.auc.toFixed(2)}, k50 ${Number.isFinite(c.k50) ? c.k50.toFixed(1) : "—"}`;
      g.append(title);
      g.append(svg("polyline", { points: c.k.map((k, i) => `${x(k)},${y(c.recovery[i])}`).join(" "), fill: "none" }));
      c.k.forEach((k, i) => {
        const p = svg("circle", { cx: x(k), cy: y(c.recovery[i]), r: 2 });
        p.dataset.k = String(k);
        p.dataset.r = String(c.recovery[i]);
        g.append(p);
      });
      out.append(g);
    }
    return out;
  }
}
