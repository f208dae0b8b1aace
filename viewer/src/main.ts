// The viewer's controller: loads a results root into the app store (store.ts: all app state, the
// view mirrored in the URL), and wires the header, sidebar, graph, detail view, causal panel,
// pair explorer, class overview and neuron atlas.
import * as d3 from "d3";
import "./style.css";
import type { PairRow } from "./data";
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
  fileCache,
  resolveRoot,
  traffic,
} from "./data";
import { PairExplorer } from "./explorer";
import { NeuronAtlas } from "./atlas";
import { CausalPanel } from "./causal";
import { ClassOverview } from "./overview";
import { GraphView, ROLE_COLOR } from "./graph";
import type { FilterMode, GraphSummary } from "./graph";
import type { Criterion } from "./highlight";
import { DetailView } from "./detail";
import { AppStore } from "./store";
import { Picker } from "./picker";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

interface Debug {
  traffic: typeof traffic;
  /** bytes the open Parquet files keep, and their budget (tests lower it) */
  fileCache: typeof fileCache;
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
const debug: Debug = { traffic, fileCache, state: "loading" };
(window as unknown as { __bluff: Debug }).__bluff = debug;

const store = new AppStore(new URLSearchParams(window.location.search).get("root"));

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
  if (store.root) {
    const r = document.createElement("div");
    r.className = "error-root";
    r.textContent = `Results root: ${store.root}`;
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

const fmt = (e: number) => (e === 0 ? "0 (benign)" : e.toFixed(2));
// --- widgets ----------------------------------------------------------------------------------------

const graph = new GraphView($("graph") as unknown as SVGSVGElement, {
  hover: (n, anchor) => {
    if (n !== store.hoveredNode) store.assetsFailedFor = null;
    store.hoveredNode = n;
    store.hoverAnchor = anchor;
    renderDetail();
  },
  click: (n) => {
    if (store.view.pins.has(n.id)) store.view.pins.delete(n.id);
    else store.view.pins.add(n.id);
    refresh(store.view.filter === "pinned");
  },
});
const detail = new DetailView($("detail"));
const explorer = new PairExplorer($("explorer"), (o, t) => openPair(o, t));
const overview = new ClassOverview(
  $("overview"),
  (o, t) => openPair(o, t),
  (i) => {
    if (!store.view.compare && store.view.s !== i + 1) {
      store.view.s = i + 1;
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
const targetPicker = new Picker($("pick-target"), "- - - Select - - -", (v) => openPair(store.original!, v), "target class");

const nameOf = (c: number) => store.names.get(c) ?? `class ${c}`;

function targetOptions(rows: PairRow[] | undefined) {
  return (rows ?? []).map((p) => ({ value: p.target, label: nameOf(p.target), detail: store.classes[p.target]?.wnid }));
}

async function pickOriginal(v: number): Promise<void> {
  const token = ++store.loadToken;
  store.original = v;
  store.target = null;
  store.pairRow = null;
  store.pairData = null;
  targetPicker.setOptions([], null);
  graph.clear();
  detail.hide();
  causalPanel.clear();
  clearError();
  setStatus(`Loading the pairs of ${nameOf(v)}…`);
  store.writeUrl();
  renderSidebar();
  try {
    const rows = await loadPartition(store.root, v);
    if (token !== store.loadToken) return;
    targetPicker.setOptions(targetOptions(rows), null);
    setStatus(rows.length ? "Pick a target class." : `${nameOf(v)} has no computed pairs.`);
  } catch (e) {
    if (token !== store.loadToken) return;
    showError(`Could not read the pairs of ${nameOf(v)}.`, e);
  }
}

function renderDetail(): void {
  const n = store.hoveredNode;
  if (!n || !store.hoverAnchor || !store.pairData) {
    detail.hide();
    return;
  }
  const layerNodes = store.pairData.nodes.filter((m) => m.layerIndex === n.layerIndex);
  const layerMax = d3.max(layerNodes.flatMap((m) => [...m.act, m.target]).filter(Number.isFinite)) ?? 1;
  const s = store.view.compare ? store.view.stronger : store.view.s;
  const failed = store.assetsFailedFor === n;
  const causal = store.manifest.causal === false || !store.pairRow ? null : { nSuccess: store.pairRow.nSuccess };
  detail.show(n, store.hoverAnchor, store.strengthValues(), s, layerMax, store.assets ? store.assets.get(n.id) : failed ? "error" : null, causal);
  if (!store.assets && !failed) {
    loadAssets(store.root).then(
      (a) => {
        store.assets = a;
        if (store.hoveredNode === n) renderDetail();
      },
      (e) => {
        // not remembered beyond this hover: the next hover asks again (data.ts forgets the failed read)
        console.warn("neuron assets unavailable:", (e as Error).message);
        if (store.hoveredNode !== n) return;
        store.assetsFailedFor = n;
        renderDetail();
      },
    );
  }
}

function renderSuccess(): void {
  const host = d3.select($("success"));
  host.selectAll("*").remove();
  const p = store.pairRow;
  if (!p) return;
  host.append("div").attr("class", "success-title").text(`Attack success (${p.nImages} images)`);
  const w = 240,
    h = 64,
    m = { l: 34, r: 4, t: 6, b: 16 };
  const svg = host.append("svg").attr("width", w).attr("height", h).attr("class", "success-chart");
  const S = store.manifest.strengths.length;
  const x = d3
    .scaleBand<number>()
    .domain(d3.range(1, S + 1))
    .range([m.l, w - m.r])
    .padding(0.15);
  const y = d3.scaleLinear().domain([0, 1]).range([h - m.b, m.t]);
  const cls = (i: number) =>
    store.view.compare ? (i === store.view.weaker ? "bar current weaker" : i === store.view.stronger ? "bar current stronger" : "bar") : i === store.view.s ? "bar current" : "bar";
  svg
    .selectAll("rect")
    .data(p.successRate.map((r, i) => ({ r, i: i + 1, n: p.nSuccess[i] })))
    .join("rect")
    .attr("class", (d) => cls(d.i))
    .attr("data-strength", (d) => store.manifest.strengths[d.i - 1])
    .attr("x", (d) => x(d.i)!)
    .attr("width", x.bandwidth())
    // the current strength's bar stays visible at 0% (2 px)
    .attr("y", (d) => Math.min(y(Number.isFinite(d.r) ? d.r : 0), cls(d.i) === "bar" ? y(0) : y(0) - 2))
    .attr("height", (d) => Math.max(y(0) - y(Number.isFinite(d.r) ? d.r : 0), cls(d.i) === "bar" ? 0 : 2))
    .append("title")
    .text((d) => `eps ${store.manifest.strengths[d.i - 1].toFixed(2)}: ${d.n}/${p.nImages} succeeded`);
  svg.append("g").attr("transform", `translate(${m.l},0)`).call(d3.axisLeft(y).ticks(2, "%").tickSizeOuter(0));
  svg
    .append("text")
    .attr("x", m.l)
    .attr("y", h - 3)
    .attr("class", "tick-note")
    .text(`eps ${store.manifest.strengths[0]} … ${store.manifest.strengths[S - 1]}`);
  const at = (i: number) => {
    const r = p.successRate[i - 1];
    return `${p.nSuccess[i - 1]}/${p.nImages} (${Number.isFinite(r) ? (100 * r).toFixed(0) : "—"}%)`;
  };
  let txt: string;
  if (store.view.compare)
    txt = `Weaker, eps ${fmt(store.manifest.strengths[store.view.weaker - 1])}: ${at(store.view.weaker)} · stronger, eps ${fmt(store.manifest.strengths[store.view.stronger - 1])}: ${at(store.view.stronger)}`;
  else if (store.view.s >= 1) txt = `At eps ${fmt(store.manifest.strengths[store.view.s - 1])}: ${at(store.view.s)}`;
  else txt = "Strength 0: benign images, no attack";
  host.append("div").attr("id", "success-text").attr("class", "hint").text(txt);
}

/** Why the graph is faded: no attack of the pair succeeded at the strength(s) shown. */
function explanation(): string | null {
  const p = store.pairRow;
  if (!p || !store.pairData) return null;
  const st = store.manifest.strengths;
  const e = (i: number) => `eps ${st[i - 1].toFixed(2)}`;
  const o = nameOf(p.original);
  const t = nameOf(p.target);
  if (!(p.nImages > 0)) return `No image of ${o} is classified correctly by the model, so none was attacked.`;
  const first = p.nSuccess.findIndex((n) => n > 0) + 1; // 0: never
  const none = (i: number) => !(p.nSuccess[i - 1] > 0);
  const never = `No attack from ${o} to ${t} succeeded at any strength (up to ${e(st.length)}).`;
  if (!store.view.compare) {
    if (store.view.s === 0 || !none(store.view.s)) return null;
    if (!first) return never;
    return `No attack from ${o} to ${t} succeeded at ${e(store.view.s)}: move the strength slider ${first > store.view.s ? "right" : "left"} (first success at ${e(first)}).`;
  }
  const [w, s] = [store.view.weaker, store.view.stronger];
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
  const vals = store.strengthValues();
  const slider = $("strength") as HTMLInputElement;
  slider.value = String(store.view.s);
  slider.disabled = store.view.compare;
  $("strength-value").textContent = fmt(vals[store.view.s]);
  ($("criterion") as HTMLSelectElement).value = store.view.criterion;
  ($("neuron-pct") as HTMLInputElement).value = String(store.view.neuronPct);
  $("neuron-pct-value").textContent = String(store.view.neuronPct);
  ($("edge-pct") as HTMLInputElement).value = String(store.view.edgePct);
  $("edge-pct-value").textContent = String(store.view.edgePct);
  document.querySelectorAll<HTMLInputElement>("#filter input").forEach((r) => (r.checked = r.value === store.view.filter));
  ($("compare") as HTMLInputElement).checked = store.view.compare;
  ($("weaker") as HTMLInputElement).value = String(store.view.weaker);
  ($("stronger") as HTMLInputElement).value = String(store.view.stronger);
  for (const id of ["weaker", "stronger", "compare-edges"]) ($(id) as HTMLInputElement).disabled = !store.view.compare;
  $("weaker-value").textContent = vals[store.view.weaker].toFixed(2);
  $("stronger-value").textContent = vals[store.view.stronger].toFixed(2);
  ($("compare-edges") as HTMLSelectElement).value = store.view.compareEdges;
  $("criterion-echo").textContent = store.view.criterion;
  $("compare-panel").classList.toggle("off", !store.view.compare);
  ($("effect-rings") as HTMLInputElement).checked = store.view.effectRings;
  renderSuccess();
  renderExplain();
  causalPanel.render(store.pairRow, store.manifest.strengths, store.view);
  explorer.setStrength(store.view.s);
  atlas.setStrength(store.view.s);
  if (store.view.s >= 1 && !store.view.compare) overview.setStrength(store.view.s - 1);
}

function renderCounts(sum: GraphSummary): void {
  const el = $("counts");
  el.textContent = "";
  if (!store.pairData) return;
  const shown = store.pairData.nodes.length;
  const byRole = d3.rollup(
    store.pairData.nodes,
    (v) => v.length,
    (n) => n.role,
  );
  const lines = [
    `${sum.shownNodes} of ${shown} neurons shown, ${sum.highlighted} highlighted`,
    `${sum.edges} of ${store.pairData.edges.length} connections drawn`,
    `original ${byRole.get("original") ?? 0} · both ${byRole.get("both") ?? 0} · target ${byRole.get("target") ?? 0} · exploited ${byRole.get("exploited") ?? 0}`,
    store.view.pins.size ? `${store.view.pins.size} pinned` : "nothing pinned",
  ];
  for (const l of lines) {
    const d = document.createElement("div");
    d.textContent = l;
    el.append(d);
  }
  if (store.pairData.nodes.length === 0) setStatus("No neurons are stored for this pair.");
  else if (store.view.filter === "pinned" && store.view.pins.size === 0) setStatus("No pinned neurons: click neurons in the full graph to pin them.");
  else if (store.view.filter === "highlighted" && sum.shownNodes === 0) setStatus("Nothing is highlighted at this strength.");
  else setStatus("");
}

function refresh(animate = false): void {
  store.writeUrl();
  renderSidebar();
  if (!store.pairData) return;
  const sum = graph.update(store.view, animate);
  debug.summary = sum;
  renderCounts(sum);
  if (store.hoveredNode) renderDetail();
}

async function openPair(o: number, t: number): Promise<void> {
  const token = ++store.loadToken;
  store.original = o;
  store.target = t;
  origPicker.setValue(o);
  targetPicker.setOptions(targetOptions(loadedPartition(o)), t);
  clearError();
  store.writeUrl();
  setStatus(`Loading ${nameOf(o)} → ${nameOf(t)}…`);
  debug.state = "loading";
  const t0 = performance.now();
  const fail = (what: string, e: unknown) => {
    if (token !== store.loadToken) return;
    store.pairData = null;
    store.pairRow = null;
    graph.clear();
    causalPanel.clear();
    renderSidebar();
    showError(what, e);
  };
  let p: PairRow | undefined;
  try {
    if (store.classes[o] && store.classes[o].nAsOriginal === 0)
      throw new DataError(paths.pairIndex(o), `${nameOf(o)} (${o}) was not computed as an original: pick another original.`);
    const rows = await loadPartition(store.root, o);
    if (token !== store.loadToken) return;
    targetPicker.setOptions(targetOptions(rows), t);
    p = rows.find((x) => x.target === t);
    if (!p) throw new DataError(paths.pairIndex(o), `has no pair ${nameOf(o)} (${o}) → ${nameOf(t)} (${t}); pick another target.`);
  } catch (e) {
    fail("Pair not found.", e);
    return;
  }
  try {
    // the edge influences of the strengths on screen first; the rest after the graph is drawn
    const v = store.view;
    const data = await loadPair(store.root, store.manifest, p, v.compare ? [v.weaker, v.stronger] : [v.s]);
    if (token !== store.loadToken) return;
    store.pairRow = p;
    store.pairData = data;
    store.hoveredNode = null;
    detail.hide();
    const known = new Set(data.nodes.map((n) => n.id));
    store.view.pins = new Set([...store.view.pins].filter((id) => known.has(id)));
    graph.setPair(data, store.manifest.layers.map((l) => l.name), { original: nameOf(o), target: nameOf(t) });
    setStatus(data.nodes.length ? "" : "No neurons are stored for this pair.");
    refresh(false);
    debug.pairLoadMs = performance.now() - t0;
    if (debug.firstGraphMs === undefined) {
      debug.firstGraphMs = performance.now();
      debug.firstGraphBytes = { ...traffic.byFile };
    }
    void loadPairCausal(p, token);
    if (await data.loadRest()) {
      if (token !== store.loadToken) return;
      // edge widths span every condition (highlight.widthScales): redraw with all of them
      graph.setPair(data, store.manifest.layers.map((l) => l.name), { original: nameOf(o), target: nameOf(t) });
      refresh(false);
    }
    debug.state = "ready";
  } catch (e) {
    fail(`Could not load the pair ${nameOf(o)} → ${nameOf(t)}.`, e);
  }
}

/** The pair's causal rows, read after its graph is drawn (they never delay it). */
async function loadPairCausal(p: PairRow, token: number): Promise<void> {
  if (store.manifest.causal === false) {
    causalPanel.off("Activation patching was not run for these results (manifest.json: causal false): no causal panel and no neuron effects.", "off");
    return;
  }
  causalPanel.loading();
  try {
    const rows = await loadCausal(store.root, p);
    if (token !== store.loadToken) return;
    causalPanel.setRows(rows);
    causalPanel.render(store.pairRow, store.manifest.strengths, store.view);
  } catch (e) {
    if (token !== store.loadToken) return;
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
  const S = store.manifest.strengths.length;
  const slider = $("strength") as HTMLInputElement;
  slider.max = String(S);
  slider.addEventListener("input", () => {
    store.view.s = Number(slider.value);
    refresh();
  });
  $("criterion").addEventListener("change", (e) => {
    store.view.criterion = (e.target as HTMLSelectElement).value as Criterion;
    refresh(store.view.filter === "highlighted");
  });
  $("neuron-pct").addEventListener("input", (e) => {
    store.view.neuronPct = Number((e.target as HTMLInputElement).value);
    refresh(store.view.filter === "highlighted");
  });
  $("edge-pct").addEventListener("input", (e) => {
    store.view.edgePct = Number((e.target as HTMLInputElement).value);
    refresh();
  });
  document.querySelectorAll<HTMLInputElement>("#filter input").forEach((r) =>
    r.addEventListener("change", () => {
      if (r.checked) {
        store.view.filter = r.value as FilterMode;
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
    store.view.weaker = Math.min(Number(weaker.value), store.view.stronger - 1);
    if (store.view.weaker < 1) store.view.weaker = 1;
    refresh();
  });
  stronger.addEventListener("input", () => {
    store.view.stronger = Math.max(Number(stronger.value), store.view.weaker + 1);
    if (store.view.stronger > S) store.view.stronger = S;
    refresh();
  });
  $("compare").addEventListener("change", (e) => {
    store.view.compare = (e.target as HTMLInputElement).checked && S >= 2;
    refresh();
  });
  $("effect-rings").addEventListener("change", (e) => {
    store.view.effectRings = (e.target as HTMLInputElement).checked;
    refresh();
  });
  $("compare-edges").addEventListener("change", (e) => {
    store.view.compareEdges = (e.target as HTMLSelectElement).value as "weaker" | "stronger";
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
        store.hoveredNode = null;
        detail.hide();
        if (store.view.pins.size) {
          store.view.pins.clear();
          refresh(store.view.filter === "pinned");
        }
      }
      return;
    }
    if (typing || t instanceof HTMLSelectElement || (t instanceof HTMLInputElement && t.type === "range")) return;
    if (explorer.isOpen || overview.isOpen || atlas.isOpen) return;
    if ((e.key === "ArrowLeft" || e.key === "ArrowRight") && !store.view.compare) {
      e.preventDefault();
      store.view.s = Math.max(0, Math.min(S, store.view.s + (e.key === "ArrowRight" ? 1 : -1)));
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
  return store.view.compare ? store.view.stronger - 1 : Math.max(1, store.view.s) - 1;
}

async function main(): Promise<void> {
  setStatus("Loading results…");
  store.root = await resolveRoot(store.rootParam);
  debug.root = store.root;
  try {
    store.manifest = await loadManifest(store.root);
  } catch (e) {
    showError("No results found.", e);
    return;
  }
  $("attack-method").textContent = `${store.manifest.attack.method.toUpperCase().replace("_", " ")}`;
  $("attack-method").title = store.manifest.input_space ?? store.manifest.model.input_space ?? "";
  $("model-name").textContent = store.manifest.model.name;
  const S = store.manifest.strengths.length;
  // Bluff's defaults on its 0.05..0.50 grid, by position: strength = the 2nd strength (0.10),
  // compare weaker = the 1st (0.05), stronger = the next-to-last (0.45); any grid of strengths works.
  store.view.s = Math.min(2, S);
  store.view.weaker = 1;
  store.view.stronger = Math.min(S, Math.max(2, S - 1));
  const q = new URLSearchParams(window.location.search);
  store.readUrl(window.location.search);
  // no pair in the URL: the manifest's landing view (pair, and strength unless the URL has one)
  const land = store.manifest.landing;
  if (!q.has("original") && land && Number.isInteger(land.original) && Number.isInteger(land.target)) {
    store.original = land.original;
    store.target = land.target;
    if (!q.has("eps") && Number.isInteger(land.strength) && land.strength >= 1 && land.strength <= S) store.view.s = land.strength;
  }
  // classes and the original's partition in parallel (both are needed for the first graph)
  const partition = store.original !== null ? loadPartition(store.root, store.original) : null;
  partition?.catch(() => undefined); // reported by openPair
  try {
    store.classes = await loadClasses(store.root, store.manifest);
  } catch (e) {
    showError("The results root is incomplete.", e);
    return;
  }
  store.names = new Map(store.classes.map((c) => [c.id, c.name]));
  wireControls();
  explorer.setData(store.root, store.classes, store.manifest.strengths);
  overview.setData(store.root, store.classes, store.manifest.strengths);
  atlas.setData(store.root, store.manifest, store.classes);
  if (store.manifest.causal === false) {
    $("effect-controls").hidden = true;
    causalPanel.off("Activation patching was not run for these results (manifest.json: causal false): no causal panel and no neuron effects.", "off");
  }
  debug.loadCausal = async (o, t) => {
    const p = (await loadPartition(store.root, o)).find((x) => x.target === t);
    if (!p) throw new Error(`no pair ${o} -> ${t}`);
    return loadCausal(store.root, p);
  };
  origPicker.setOptions(
    store.classes.map((c) => ({
      value: c.id,
      label: c.name,
      detail: c.wnid,
      disabled: c.nAsOriginal === 0,
      note: c.nAsOriginal === 0 ? "not computed" : undefined,
    })),
    store.original,
  );
  if (!store.classes.some((c) => c.nAsOriginal > 0)) {
    showError("No pairs yet.", new DataError(paths.classes, "lists no computed pair (n_as_original is 0 for every class): the run has not finished any pair"));
    return;
  }
  if (store.original === null) store.original = store.classes.find((c) => c.nAsOriginal > 0)!.id;
  if (store.target === null) {
    let rows: PairRow[];
    try {
      rows = await loadPartition(store.root, store.original);
    } catch (e) {
      showError("The results root is incomplete.", e);
      return;
    }
    if (!rows.length) {
      void pickOriginal(store.original);
      return;
    }
    store.target = rows[0].target;
  }
  await openPair(store.original, store.target);
}

main().catch((e) => showError("Unexpected error.", e));
