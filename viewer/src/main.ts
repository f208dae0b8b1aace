// The viewer's controller: loads a results root, keeps the view state (mirrored in the URL so a
// link reopens the same view), and wires the header, sidebar, graph, detail view, causal panel,
// pair explorer, class overview and neuron atlas.
import * as d3 from "d3";
import "./style.css";
import type { ClassInfo, Manifest, NeuronAssets, NodeRow, PairData, PairRow } from "./data";
import {
  DataError,
  VersionError,
  loadAssets,
  loadCausal,
  loadClasses,
  loadManifest,
  loadPair,
  loadPartition,
  loadedPartition,
  paths,
  resolveRoot,
  traffic,
} from "./data";
import { PairExplorer } from "./explorer";
import { NeuronAtlas } from "./atlas";
import { CausalPanel } from "./causal";
import { ClassOverview } from "./overview";
import { GraphView, ROLE_COLOR } from "./graph";
import type { FilterMode, GraphSummary, ViewState } from "./graph";
import type { Criterion } from "./highlight";
import { CRITERIA } from "./highlight";
import { DetailView } from "./detail";
import { Picker } from "./picker";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

interface Debug {
  traffic: typeof traffic;
  state: string;
  root?: string;
  summary?: GraphSummary;
  pairLoadMs?: number;
  firstGraphMs?: number;
  /** bytes fetched when the first pair's graph was drawn, per file */
  firstGraphBytes?: Record<string, number>;
  error?: string;
  /** for tests: the data layer's causal reader */
  loadCausal?: (o: number, t: number) => Promise<unknown>;
}
const debug: Debug = { traffic, state: "loading" };
(window as unknown as { __bluff: Debug }).__bluff = debug;

let root = "";
let manifest: Manifest;
let classes: ClassInfo[] = [];
let names = new Map<number, string>();
let pairRow: PairRow | null = null;
let pairData: PairData | null = null;
let original: number | null = null;
let target: number | null = null;
let assets: Map<string, NeuronAssets> | null = null;
/** the hovered neuron whose asset index read failed (the next hover tries again) */
let assetsFailedFor: NodeRow | null = null;
let hoveredNode: NodeRow | null = null;
let hoverAnchor: DOMRect | null = null;
let loadToken = 0;
const rootParam = new URLSearchParams(window.location.search).get("root");

const view: ViewState = {
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

// --- messages ---------------------------------------------------------------------------------

function showError(what: string, err: unknown): void {
  if (err instanceof VersionError) what = "Results from another version of bluff_ray.";
  const el = $("error");
  const detail =
    err instanceof DataError ? `${err.file}: ${err.message}` : err instanceof Error ? err.message : String(err);
  el.textContent = "";
  const strong = document.createElement("strong");
  strong.textContent = what;
  el.append(strong, document.createTextNode(` ${detail}`));
  if (root) {
    const r = document.createElement("div");
    r.className = "error-root";
    r.textContent = `Results root: ${root}`;
    el.append(r);
  }
  el.hidden = false;
  debug.state = "error";
  debug.error = `${what} ${detail}`;
  setStatus("");
}

function clearError(): void {
  $("error").hidden = true;
  debug.error = undefined;
}

function setStatus(text: string): void {
  $("status").textContent = text;
  $("status").hidden = !text;
}

// --- strengths ------------------------------------------------------------------------------------

const strengthValues = () => [0, ...manifest.strengths];
const fmt = (e: number) => (e === 0 ? "0 (benign)" : e.toFixed(2));
function nearestIndex(v: number, from = 0): number {
  const vals = strengthValues();
  let best = from;
  for (let i = from; i < vals.length; i++) if (Math.abs(vals[i] - v) < Math.abs(vals[best] - v)) best = i;
  return best;
}

// --- URL state ------------------------------------------------------------------------------------

function readUrl(): void {
  const q = new URLSearchParams(window.location.search);
  const S = manifest.strengths.length;
  const int = (k: string) => (q.has(k) && /^\d+$/.test(q.get(k)!) ? Number(q.get(k)) : null);
  original = int("original");
  target = int("target");
  if (q.has("eps")) {
    const e = Number(q.get("eps"));
    if (Number.isFinite(e)) view.s = nearestIndex(e);
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
      view.weaker = Math.min(nearestIndex(w, 1), S - 1 || 1);
      view.stronger = Math.max(nearestIndex(s, 1), Math.min(view.weaker + 1, S));
    }
  }
  const ce = q.get("compare_edges");
  if (ce === "weaker" || ce === "stronger") view.compareEdges = ce;
  view.effectRings = q.get("rings") === "effect";
}

function writeUrl(): void {
  const q = new URLSearchParams();
  if (rootParam) q.set("root", rootParam);
  if (original !== null) q.set("original", String(original));
  if (target !== null) q.set("target", String(target));
  const vals = strengthValues();
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

// --- widgets ----------------------------------------------------------------------------------------

const graph = new GraphView($("graph") as unknown as SVGSVGElement, {
  hover: (n, anchor) => {
    if (n !== hoveredNode) assetsFailedFor = null;
    hoveredNode = n;
    hoverAnchor = anchor;
    renderDetail();
  },
  click: (n) => {
    if (view.pins.has(n.id)) view.pins.delete(n.id);
    else view.pins.add(n.id);
    refresh(view.filter === "pinned");
  },
});
const detail = new DetailView($("detail"));
const explorer = new PairExplorer($("explorer"), (o, t) => openPair(o, t));
const overview = new ClassOverview(
  $("overview"),
  (o, t) => openPair(o, t),
  (i) => {
    if (!view.compare && view.s !== i + 1) {
      view.s = i + 1;
      refresh();
    }
  },
);
const causalPanel = new CausalPanel($("causal-panel"));
const atlas = new NeuronAtlas($("atlas"), {
  explore: (o, t, sIndex) => {
    atlas.close();
    explorer.openFiltered(o, t, sIndex);
  },
  openPair: (o, t) => {
    atlas.close();
    void openPair(o, t);
  },
});
const origPicker = new Picker($("pick-original"), "- - - Select - - -", (v) => pickOriginal(v), "original class");
const targetPicker = new Picker($("pick-target"), "- - - Select - - -", (v) => openPair(original!, v), "target class");

const nameOf = (c: number) => names.get(c) ?? `class ${c}`;

function targetOptions(rows: PairRow[] | undefined) {
  return (rows ?? []).map((p) => ({ value: p.target, label: nameOf(p.target), detail: classes[p.target]?.wnid }));
}

async function pickOriginal(v: number): Promise<void> {
  const token = ++loadToken;
  original = v;
  target = null;
  pairRow = null;
  pairData = null;
  targetPicker.setOptions([], null);
  graph.clear();
  detail.hide();
  causalPanel.clear();
  clearError();
  setStatus(`Loading the pairs of ${nameOf(v)}…`);
  writeUrl();
  renderSidebar();
  try {
    const rows = await loadPartition(root, v);
    if (token !== loadToken) return;
    targetPicker.setOptions(targetOptions(rows), null);
    setStatus(rows.length ? "Pick a target class." : `${nameOf(v)} has no computed pairs.`);
  } catch (e) {
    if (token !== loadToken) return;
    showError(`Could not read the pairs of ${nameOf(v)}.`, e);
  }
}

function renderDetail(): void {
  const n = hoveredNode;
  if (!n || !hoverAnchor || !pairData) {
    detail.hide();
    return;
  }
  const layerNodes = pairData.nodes.filter((m) => m.layerIndex === n.layerIndex);
  const layerMax = d3.max(layerNodes.flatMap((m) => [...m.act, m.target]).filter(Number.isFinite)) ?? 1;
  const s = view.compare ? view.stronger : view.s;
  const failed = assetsFailedFor === n;
  const causal = manifest.causal === false || !pairRow ? null : { nSuccess: pairRow.nSuccess };
  detail.show(n, hoverAnchor, strengthValues(), s, layerMax, assets ? assets.get(n.id) : failed ? "error" : null, causal);
  if (!assets && !failed) {
    loadAssets(root).then(
      (a) => {
        assets = a;
        if (hoveredNode === n) renderDetail();
      },
      (e) => {
        // not remembered beyond this hover: the next hover asks again (data.ts forgets the failed read)
        console.warn("neuron assets unavailable:", (e as Error).message);
        if (hoveredNode !== n) return;
        assetsFailedFor = n;
        renderDetail();
      },
    );
  }
}

function renderSuccess(): void {
  const host = d3.select($("success"));
  host.selectAll("*").remove();
  const p = pairRow;
  if (!p) return;
  host.append("div").attr("class", "success-title").text(`Attack success (${p.nImages} images)`);
  const w = 240,
    h = 64,
    m = { l: 34, r: 4, t: 6, b: 16 };
  const svg = host.append("svg").attr("width", w).attr("height", h).attr("class", "success-chart");
  const S = manifest.strengths.length;
  const x = d3
    .scaleBand<number>()
    .domain(d3.range(1, S + 1))
    .range([m.l, w - m.r])
    .padding(0.15);
  const y = d3.scaleLinear().domain([0, 1]).range([h - m.b, m.t]);
  const cls = (i: number) =>
    view.compare ? (i === view.weaker ? "bar current weaker" : i === view.stronger ? "bar current stronger" : "bar") : i === view.s ? "bar current" : "bar";
  svg
    .selectAll("rect")
    .data(p.successRate.map((r, i) => ({ r, i: i + 1, n: p.nSuccess[i] })))
    .join("rect")
    .attr("class", (d) => cls(d.i))
    .attr("data-strength", (d) => manifest.strengths[d.i - 1])
    .attr("x", (d) => x(d.i)!)
    .attr("width", x.bandwidth())
    // the current strength's bar stays visible at 0% (2 px)
    .attr("y", (d) => Math.min(y(Number.isFinite(d.r) ? d.r : 0), cls(d.i) === "bar" ? y(0) : y(0) - 2))
    .attr("height", (d) => Math.max(y(0) - y(Number.isFinite(d.r) ? d.r : 0), cls(d.i) === "bar" ? 0 : 2))
    .append("title")
    .text((d) => `eps ${manifest.strengths[d.i - 1].toFixed(2)}: ${d.n}/${p.nImages} succeeded`);
  svg.append("g").attr("transform", `translate(${m.l},0)`).call(d3.axisLeft(y).ticks(2, "%").tickSizeOuter(0));
  svg
    .append("text")
    .attr("x", m.l)
    .attr("y", h - 3)
    .attr("class", "tick-note")
    .text(`eps ${manifest.strengths[0]} … ${manifest.strengths[S - 1]}`);
  const at = (i: number) => {
    const r = p.successRate[i - 1];
    return `${p.nSuccess[i - 1]}/${p.nImages} (${Number.isFinite(r) ? (100 * r).toFixed(0) : "—"}%)`;
  };
  let txt: string;
  if (view.compare)
    txt = `Weaker, eps ${fmt(manifest.strengths[view.weaker - 1])}: ${at(view.weaker)} · stronger, eps ${fmt(manifest.strengths[view.stronger - 1])}: ${at(view.stronger)}`;
  else if (view.s >= 1) txt = `At eps ${fmt(manifest.strengths[view.s - 1])}: ${at(view.s)}`;
  else txt = "Strength 0: benign images, no attack";
  host.append("div").attr("id", "success-text").attr("class", "hint").text(txt);
}

/** Why the graph is faded: no attack of the pair succeeded at the strength(s) shown. */
function explanation(): string | null {
  const p = pairRow;
  if (!p || !pairData) return null;
  const st = manifest.strengths;
  const e = (i: number) => `eps ${st[i - 1].toFixed(2)}`;
  const o = nameOf(p.original);
  const t = nameOf(p.target);
  if (!(p.nImages > 0)) return `No image of ${o} is classified correctly by the model, so none was attacked.`;
  const first = p.nSuccess.findIndex((n) => n > 0) + 1; // 0: never
  const none = (i: number) => !(p.nSuccess[i - 1] > 0);
  const never = `No attack from ${o} to ${t} succeeded at any strength (up to ${e(st.length)}).`;
  if (!view.compare) {
    if (view.s === 0 || !none(view.s)) return null;
    if (!first) return never;
    return `No attack from ${o} to ${t} succeeded at ${e(view.s)}: move the strength slider ${first > view.s ? "right" : "left"} (first success at ${e(first)}).`;
  }
  const [w, s] = [view.weaker, view.stronger];
  if (!none(w) && !none(s)) return null;
  if (!first) return never;
  if (none(w) && none(s))
    return `No attack from ${o} to ${t} succeeded at ${e(w)} or ${e(s)}: move the pointers (first success at ${e(first)}).`;
  const which = none(w) ? w : s;
  return `No attack from ${o} to ${t} succeeded at ${e(which)} (the ${which === w ? "weaker" : "stronger"} pointer): nothing is highlighted there (first success at ${e(first)}).`;
}

function renderExplain(): void {
  const el = $("explain");
  const txt = explanation();
  el.textContent = txt ?? "";
  el.hidden = !txt;
}

function renderSidebar(): void {
  const vals = strengthValues();
  const slider = $("strength") as HTMLInputElement;
  slider.value = String(view.s);
  slider.disabled = view.compare;
  $("strength-value").textContent = fmt(vals[view.s]);
  ($("criterion") as HTMLSelectElement).value = view.criterion;
  ($("neuron-pct") as HTMLInputElement).value = String(view.neuronPct);
  $("neuron-pct-value").textContent = String(view.neuronPct);
  ($("edge-pct") as HTMLInputElement).value = String(view.edgePct);
  $("edge-pct-value").textContent = String(view.edgePct);
  document.querySelectorAll<HTMLInputElement>("#filter input").forEach((r) => (r.checked = r.value === view.filter));
  ($("compare") as HTMLInputElement).checked = view.compare;
  ($("weaker") as HTMLInputElement).value = String(view.weaker);
  ($("stronger") as HTMLInputElement).value = String(view.stronger);
  for (const id of ["weaker", "stronger", "compare-edges"]) ($(id) as HTMLInputElement).disabled = !view.compare;
  $("weaker-value").textContent = vals[view.weaker].toFixed(2);
  $("stronger-value").textContent = vals[view.stronger].toFixed(2);
  ($("compare-edges") as HTMLSelectElement).value = view.compareEdges;
  $("criterion-echo").textContent = view.criterion;
  $("compare-panel").classList.toggle("off", !view.compare);
  ($("effect-rings") as HTMLInputElement).checked = view.effectRings;
  renderSuccess();
  renderExplain();
  causalPanel.render(pairRow, manifest.strengths, view);
  explorer.setStrength(view.s);
  atlas.setStrength(view.s);
  if (view.s >= 1 && !view.compare) overview.setStrength(view.s - 1);
}

function renderCounts(sum: GraphSummary): void {
  const el = $("counts");
  el.textContent = "";
  if (!pairData) return;
  const shown = pairData.nodes.length;
  const byRole = d3.rollup(
    pairData.nodes,
    (v) => v.length,
    (n) => n.role,
  );
  const lines = [
    `${sum.shownNodes} of ${shown} neurons shown, ${sum.highlighted} highlighted`,
    `${sum.edges} of ${pairData.edges.length} connections drawn`,
    `original ${byRole.get("original") ?? 0} · both ${byRole.get("both") ?? 0} · target ${byRole.get("target") ?? 0} · exploited ${byRole.get("exploited") ?? 0}`,
    view.pins.size ? `${view.pins.size} pinned` : "nothing pinned",
  ];
  for (const l of lines) {
    const d = document.createElement("div");
    d.textContent = l;
    el.append(d);
  }
  if (pairData.nodes.length === 0) setStatus("No neurons are stored for this pair.");
  else if (view.filter === "pinned" && view.pins.size === 0) setStatus("No pinned neurons: click neurons in the full graph to pin them.");
  else if (view.filter === "highlighted" && sum.shownNodes === 0) setStatus("Nothing is highlighted at this strength.");
  else setStatus("");
}

function refresh(animate = false): void {
  writeUrl();
  renderSidebar();
  if (!pairData) return;
  const sum = graph.update(view, animate);
  debug.summary = sum;
  renderCounts(sum);
  if (hoveredNode) renderDetail();
}

async function openPair(o: number, t: number): Promise<void> {
  const token = ++loadToken;
  original = o;
  target = t;
  origPicker.setValue(o);
  targetPicker.setOptions(targetOptions(loadedPartition(o)), t);
  clearError();
  writeUrl();
  setStatus(`Loading ${nameOf(o)} → ${nameOf(t)}…`);
  debug.state = "loading";
  const t0 = performance.now();
  const fail = (what: string, e: unknown) => {
    if (token !== loadToken) return;
    pairData = null;
    pairRow = null;
    graph.clear();
    causalPanel.clear();
    renderSidebar();
    showError(what, e);
  };
  let p: PairRow | undefined;
  try {
    if (classes[o] && classes[o].nAsOriginal === 0)
      throw new DataError(paths.pairIndex(o), `${nameOf(o)} (${o}) was not computed as an original: pick another original.`);
    const rows = await loadPartition(root, o);
    if (token !== loadToken) return;
    targetPicker.setOptions(targetOptions(rows), t);
    p = rows.find((x) => x.target === t);
    if (!p) throw new DataError(paths.pairIndex(o), `has no pair ${nameOf(o)} (${o}) → ${nameOf(t)} (${t}); pick another target.`);
  } catch (e) {
    fail("Pair not found.", e);
    return;
  }
  try {
    // the edge influences of the strengths on screen first; the rest after the graph is drawn
    const data = await loadPair(root, manifest, p, view.compare ? [view.weaker, view.stronger] : [view.s]);
    if (token !== loadToken) return;
    pairRow = p;
    pairData = data;
    hoveredNode = null;
    detail.hide();
    const known = new Set(data.nodes.map((n) => n.id));
    view.pins = new Set([...view.pins].filter((id) => known.has(id)));
    graph.setPair(data, manifest.layers.map((l) => l.name), { original: nameOf(o), target: nameOf(t) });
    setStatus(data.nodes.length ? "" : "No neurons are stored for this pair.");
    refresh(false);
    debug.pairLoadMs = performance.now() - t0;
    if (debug.firstGraphMs === undefined) {
      debug.firstGraphMs = performance.now();
      debug.firstGraphBytes = { ...traffic.byFile };
    }
    void loadPairCausal(p, token);
    if (await data.loadRest()) {
      if (token !== loadToken) return;
      // edge widths span every condition (highlight.widthScales): redraw with all of them
      graph.setPair(data, manifest.layers.map((l) => l.name), { original: nameOf(o), target: nameOf(t) });
      refresh(false);
    }
    debug.state = "ready";
  } catch (e) {
    fail(`Could not load the pair ${nameOf(o)} → ${nameOf(t)}.`, e);
  }
}

/** The pair's causal rows, read after its graph is drawn (they never delay it). */
async function loadPairCausal(p: PairRow, token: number): Promise<void> {
  if (manifest.causal === false) {
    causalPanel.off("Activation patching was not run for these results (manifest.json: causal false): no causal panel and no neuron effects.", "off");
    return;
  }
  causalPanel.loading();
  try {
    const rows = await loadCausal(root, p);
    if (token !== loadToken) return;
    causalPanel.setRows(rows);
    causalPanel.render(pairRow, manifest.strengths, view);
  } catch (e) {
    if (token !== loadToken) return;
    if (e instanceof DataError && e.message.startsWith("not found"))
      causalPanel.off(`No activation-patching results in this root (${e.file} is missing).`, "missing");
    else
      causalPanel.off(
        `Could not read the activation-patching results: ${e instanceof DataError ? `${e.file}: ${e.message}` : (e as Error).message}`,
        "error",
      );
  }
}

// --- controls -------------------------------------------------------------------------------------

function wireControls(): void {
  const S = manifest.strengths.length;
  const slider = $("strength") as HTMLInputElement;
  slider.max = String(S);
  slider.addEventListener("input", () => {
    view.s = Number(slider.value);
    refresh();
  });
  $("criterion").addEventListener("change", (e) => {
    view.criterion = (e.target as HTMLSelectElement).value as Criterion;
    refresh(view.filter === "highlighted");
  });
  $("neuron-pct").addEventListener("input", (e) => {
    view.neuronPct = Number((e.target as HTMLInputElement).value);
    refresh(view.filter === "highlighted");
  });
  $("edge-pct").addEventListener("input", (e) => {
    view.edgePct = Number((e.target as HTMLInputElement).value);
    refresh();
  });
  document.querySelectorAll<HTMLInputElement>("#filter input").forEach((r) =>
    r.addEventListener("change", () => {
      if (r.checked) {
        view.filter = r.value as FilterMode;
        refresh(true);
      }
    }),
  );
  const weaker = $("weaker") as HTMLInputElement;
  const stronger = $("stronger") as HTMLInputElement;
  for (const el of [weaker, stronger]) {
    el.min = "1";
    el.max = String(S);
  }
  // the two pointers cannot cross: each is clamped strictly inside the other
  weaker.addEventListener("input", () => {
    view.weaker = Math.min(Number(weaker.value), view.stronger - 1);
    if (view.weaker < 1) view.weaker = 1;
    refresh();
  });
  stronger.addEventListener("input", () => {
    view.stronger = Math.max(Number(stronger.value), view.weaker + 1);
    if (view.stronger > S) view.stronger = S;
    refresh();
  });
  $("compare").addEventListener("change", (e) => {
    view.compare = (e.target as HTMLInputElement).checked && S >= 2;
    refresh();
  });
  $("effect-rings").addEventListener("change", (e) => {
    view.effectRings = (e.target as HTMLInputElement).checked;
    refresh();
  });
  $("compare-edges").addEventListener("change", (e) => {
    view.compareEdges = (e.target as HTMLSelectElement).value as "weaker" | "stronger";
    refresh();
  });
  $("open-explorer").addEventListener("click", () => explorer.open());
  $("open-overview").addEventListener("click", () => overview.open(overviewStrength()));
  $("open-atlas").addEventListener("click", () => atlas.open());
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    window.clearTimeout(resizeTimer);
    resizeTimer = window.setTimeout(() => refresh(), 150);
  });

  document.addEventListener("keydown", (e) => {
    const t = e.target as HTMLElement;
    const typing = t instanceof HTMLInputElement && (t.type === "search" || t.type === "text");
    if (e.key === "Escape") {
      if (atlas.isOpen) {
        if (atlas.detailOpen) atlas.closeDetail();
        else {
          atlas.close();
          $("open-atlas").focus();
        }
      } else if (overview.isOpen) overview.close();
      else if (explorer.isOpen) explorer.close();
      else if (origPicker.isOpen || targetPicker.isOpen) {
        origPicker.close();
        targetPicker.close();
      } else {
        hoveredNode = null;
        detail.hide();
        if (view.pins.size) {
          view.pins.clear();
          refresh(view.filter === "pinned");
        }
      }
      return;
    }
    if (typing || t instanceof HTMLSelectElement || (t instanceof HTMLInputElement && t.type === "range")) return;
    if (explorer.isOpen || overview.isOpen || atlas.isOpen) return;
    if ((e.key === "ArrowLeft" || e.key === "ArrowRight") && !view.compare) {
      e.preventDefault();
      view.s = Math.max(0, Math.min(S, view.s + (e.key === "ArrowRight" ? 1 : -1)));
      refresh();
    } else if (e.key === "p") {
      explorer.open();
    } else if (e.key === "o") {
      overview.open(overviewStrength());
    } else if (e.key === "a") {
      e.preventDefault(); // the atlas focuses its search box: the key must not type into it
      atlas.open();
    } else if (e.key === "0") {
      graph.resetZoom();
    }
  });

  // legend for compare mode
  const legend = d3.select($("legend"));
  const items = [
    { k: "N/A", outer: 0.12, inner: null },
    { k: "Weaker", outer: 0.12, inner: ROLE_COLOR.exploited },
    { k: "Stronger", outer: 1, inner: "#ffffff" },
    { k: "Both", outer: 1, inner: null },
  ];
  const it = legend
    .selectAll("span.legend-item")
    .data(items)
    .join("span")
    .attr("class", "legend-item");
  const sv = it.append("svg").attr("width", 16).attr("height", 16);
  sv.append("rect")
    .attr("x", 1)
    .attr("y", 1)
    .attr("width", 14)
    .attr("height", 14)
    .attr("rx", 2)
    .attr("fill", ROLE_COLOR.exploited)
    .attr("fill-opacity", (d) => d.outer);
  sv.filter((d) => d.inner !== null)
    .append("rect")
    .attr("x", 4.5)
    .attr("y", 4.5)
    .attr("width", 7)
    .attr("height", 7)
    .attr("fill", (d) => d.inner!);
  it.append("span").text((d) => d.k);
}

// --- start ------------------------------------------------------------------------------------------

/** The overview's strength: the slider's (the first strength at 0 = benign, or the stronger in compare mode). */
function overviewStrength(): number {
  return view.compare ? view.stronger - 1 : Math.max(1, view.s) - 1;
}

async function main(): Promise<void> {
  setStatus("Loading results…");
  root = await resolveRoot(rootParam);
  debug.root = root;
  try {
    manifest = await loadManifest(root);
  } catch (e) {
    showError("No results found.", e);
    return;
  }
  $("attack-method").textContent = `${manifest.attack.method.toUpperCase().replace("_", " ")}`;
  $("attack-method").title = manifest.input_space ?? manifest.model.input_space ?? "";
  $("model-name").textContent = manifest.model.name;
  const S = manifest.strengths.length;
  // Bluff's defaults on its 0.05..0.50 grid, by position: strength = the 2nd strength (0.10),
  // compare weaker = the 1st (0.05), stronger = the next-to-last (0.45); any grid of strengths works.
  view.s = Math.min(2, S);
  view.weaker = 1;
  view.stronger = Math.min(S, Math.max(2, S - 1));
  const q = new URLSearchParams(window.location.search);
  readUrl();
  // no pair in the URL: the manifest's landing view (pair, and strength unless the URL has one)
  const land = manifest.landing;
  if (!q.has("original") && land && Number.isInteger(land.original) && Number.isInteger(land.target)) {
    original = land.original;
    target = land.target;
    if (!q.has("eps") && Number.isInteger(land.strength) && land.strength >= 1 && land.strength <= S) view.s = land.strength;
  }
  // classes and the original's partition in parallel (both are needed for the first graph)
  const partition = original !== null ? loadPartition(root, original) : null;
  partition?.catch(() => undefined); // reported by openPair
  try {
    classes = await loadClasses(root, manifest);
  } catch (e) {
    showError("The results root is incomplete.", e);
    return;
  }
  names = new Map(classes.map((c) => [c.id, c.name]));
  wireControls();
  explorer.setData(root, classes, manifest.strengths);
  overview.setData(root, classes, manifest.strengths);
  atlas.setData(root, manifest, classes);
  if (manifest.causal === false) {
    $("effect-controls").hidden = true;
    causalPanel.off("Activation patching was not run for these results (manifest.json: causal false): no causal panel and no neuron effects.", "off");
  }
  debug.loadCausal = async (o, t) => {
    const p = (await loadPartition(root, o)).find((x) => x.target === t);
    if (!p) throw new Error(`no pair ${o} -> ${t}`);
    return loadCausal(root, p);
  };
  origPicker.setOptions(
    classes.map((c) => ({
      value: c.id,
      label: c.name,
      detail: c.wnid,
      disabled: c.nAsOriginal === 0,
      note: c.nAsOriginal === 0 ? "not computed" : undefined,
    })),
    original,
  );
  if (!classes.some((c) => c.nAsOriginal > 0)) {
    showError("No pairs yet.", new DataError(paths.classes, "lists no computed pair (n_as_original is 0 for every class): the run has not finished any pair"));
    return;
  }
  if (original === null) original = classes.find((c) => c.nAsOriginal > 0)!.id;
  if (target === null) {
    let rows: PairRow[];
    try {
      rows = await loadPartition(root, original);
    } catch (e) {
      showError("The results root is incomplete.", e);
      return;
    }
    if (!rows.length) {
      void pickOriginal(original);
      return;
    }
    target = rows[0].target;
  }
  await openPair(original, target);
}

main().catch((e) => showError("Unexpected error.", e));
