// The graph summary view: layers as rows (output layer on top), four role groups left to right,
// Bézier connections whose width follows the influence at the current strength.
import * as d3 from "d3";
import type { EdgeRow, NodeRow, PairData, Role } from "./data";
import { ROLES } from "./data";
import type { Criterion, Glyph } from "./highlight";
import { edgeWidth, edgesAmong, glyph, highlightedNodes, selectedEdges, widthScales } from "./highlight";

export const ROLE_COLOR: Record<Role, string> = {
  original: "#abdda4",
  both: "#fdae61",
  target: "#2b83ba",
  exploited: "#d7191c",
};

export type FilterMode = "full" | "pinned" | "highlighted";

export interface ViewState {
  s: number; // strength index: 0 benign, i -> manifest.strengths[i-1]
  criterion: Criterion;
  neuronPct: number;
  edgePct: number;
  filter: FilterMode;
  pins: Set<string>;
  compare: boolean;
  weaker: number;
  stronger: number;
  compareEdges: "weaker" | "stronger";
  /** ring each exploited neuron by its own causal effect (nodes.effect) at the strength shown */
  effectRings: boolean;
}

/**
 * Ring thickness at effect 1 (every successful attack undone by patching the neuron alone) for a
 * node of side `size`. The ring lies inside the node's square (it never covers a neighbour): its
 * thickness is effect x ringMax, up to 45% of the side (an almost solid square).
 */
export function ringMax(size: number): number {
  return 0.45 * size;
}

interface Pos {
  x: number;
  y: number;
}

const W = 1000;
const LEFT = 96;
const RIGHT = 24;
const TOP = 64;
const GROUP_GAP = 26;
const NODE_GAP = 4;

type NodeSel = d3.Selection<SVGGElement, NodeRow, SVGGElement, unknown>;

/** The highlighted neurons at the strength(s) shown (GraphView.highlights). */
interface Highlights {
  /** the set that selects the connections (compare mode: the pointer chosen for edges) */
  edges: Set<string>;
  /** the strength index of the connections' influence */
  edgeS: number;
  /** compare mode: the sets at the weaker and the stronger pointer (null otherwise) */
  weak: Set<string> | null;
  strong: Set<string> | null;
  /** highlighted at any strength shown */
  has: (id: string) => boolean;
}

export interface GraphSummary {
  shownNodes: number;
  highlighted: number;
  edges: number;
  glyphs: Record<Glyph, number>;
}

export class GraphView {
  private svg: d3.Selection<SVGSVGElement, unknown, null, undefined>;
  private root: d3.Selection<SVGGElement, unknown, null, undefined>;
  private defs: d3.Selection<SVGDefsElement, unknown, null, undefined>;
  private gTitles: d3.Selection<SVGGElement, unknown, null, undefined>;
  private gLayers: d3.Selection<SVGGElement, unknown, null, undefined>;
  private gEdges: d3.Selection<SVGGElement, unknown, null, undefined>;
  private gNodes: d3.Selection<SVGGElement, unknown, null, undefined>;
  private data: PairData | null = null;
  private layers: string[] = [];
  private size = 20;
  private rowH = 70;
  private pos = new Map<string, Pos>();
  private nodeById = new Map<string, NodeRow>();
  private scales = new Map<number, number>();
  private hovered: string | null = null;
  private lastLayoutKey = "";
  private zoom: d3.ZoomBehavior<SVGSVGElement, unknown>;

  constructor(
    el: SVGSVGElement,
    private handlers: {
      hover: (n: NodeRow | null, anchor: DOMRect | null) => void;
      click: (n: NodeRow) => void;
    },
  ) {
    this.svg = d3.select(el);
    this.defs = this.svg.append("defs");
    this.root = this.svg.append("g").attr("class", "zoom-root");
    this.gTitles = this.root.append("g").attr("class", "titles");
    this.gLayers = this.root.append("g").attr("class", "layer-labels");
    this.gEdges = this.root.append("g").attr("class", "edges");
    this.gNodes = this.root.append("g").attr("class", "nodes");
    this.zoom = d3
      .zoom<SVGSVGElement, unknown>()
      .scaleExtent([0.3, 8])
      .on("zoom", (ev: d3.D3ZoomEvent<SVGSVGElement, unknown>) => {
        this.root.attr("transform", ev.transform.toString());
        if (this.hovered) this.handlers.hover(null, null);
      });
    this.svg.call(this.zoom).on("dblclick.zoom", null);
  }

  resetZoom(): void {
    this.svg.call(this.zoom.transform, d3.zoomIdentity);
  }

  setPair(data: PairData, layers: string[], names: { original: string; target: string }): void {
    this.data = data;
    this.layers = layers;
    this.nodeById = new Map(data.nodes.map((n) => [n.id, n]));
    this.scales = widthScales(data.edges);
    this.hovered = null;
    this.lastLayoutKey = "";
    this.gNodes.selectAll("*").remove();
    this.gEdges.selectAll("*").remove();
    this.gTitles.selectAll("*").remove();
    this.gLayers.selectAll("*").remove();
    this.defs.selectAll("*").remove();
    this.titles = names;
  }

  private titles = { original: "", target: "" };

  clear(): void {
    this.data = null;
    for (const g of [this.gNodes, this.gEdges, this.gTitles, this.gLayers]) g.selectAll("*").remove();
    this.svg.attr("data-pair", null).attr("data-state", "empty");
  }

  /** Full layout: per layer, role groups in fixed columns (column width = the widest layer's group). */
  private fullLayout(): { pos: Map<string, Pos>; groupX: Record<Role, [number, number]> } {
    const nodes = this.data!.nodes;
    const L = this.layers.length;
    const cap: Record<Role, number> = { original: 0, both: 0, target: 0, exploited: 0 };
    const per = new Map<string, NodeRow[]>();
    for (const n of nodes) {
      const key = `${n.layerIndex}|${n.role}`;
      let l = per.get(key);
      if (!l) per.set(key, (l = []));
      l.push(n);
    }
    for (const [key, l] of per) {
      const role = key.split("|")[1] as Role;
      cap[role] = Math.max(cap[role], l.length);
    }
    for (const r of ROLES) cap[r] = Math.max(cap[r], 1);
    const slots = ROLES.reduce((a, r) => a + cap[r], 0);
    const avail = W - LEFT - RIGHT - GROUP_GAP * 3 - NODE_GAP * (slots - 4);
    this.size = Math.max(5, Math.min(26, avail / slots));
    // rows fill the panel's height (in viewBox units), within readable bounds
    const el = this.svg.node()!;
    const aspect = el.clientWidth > 0 && el.clientHeight > 0 ? el.clientHeight / el.clientWidth : 0.6;
    const fit = (W * aspect - TOP - 24) / Math.max(1, L);
    this.rowH = Math.max(this.size * 2.6, 56, Math.min(120, fit));
    const step = this.size + NODE_GAP;
    const groupX = {} as Record<Role, [number, number]>;
    let x = LEFT;
    for (const r of ROLES) {
      const w = cap[r] * step - NODE_GAP;
      groupX[r] = [x, x + w];
      x += w + GROUP_GAP;
    }
    const pos = new Map<string, Pos>();
    for (const [key, l] of per) {
      const [li, role] = [Number(key.split("|")[0]), key.split("|")[1] as Role];
      const [x0, x1] = groupX[role];
      const w = l.length * step - NODE_GAP;
      const start = x0 + (x1 - x0 - w) / 2;
      const y = TOP + (L - 1 - li) * this.rowH;
      l.sort((a, b) => a.channel - b.channel).forEach((n, i) => pos.set(n.id, { x: start + i * step, y }));
    }
    return { pos, groupX };
  }

  /** Compact layout (pinned / highlighted only): the shown neurons of a row, grouped by role, centred. */
  private compactLayout(shown: Set<string>): Map<string, Pos> {
    const L = this.layers.length;
    const pos = new Map<string, Pos>();
    const step = this.size + NODE_GAP;
    for (let li = 0; li < L; li++) {
      const row = this.data!.nodes.filter((n) => n.layerIndex === li && shown.has(n.id));
      const order = (r: Role) => ROLES.indexOf(r);
      row.sort((a, b) => order(a.role) - order(b.role) || a.channel - b.channel);
      const groups = new Set(row.map((n) => n.role)).size;
      const w = row.length * step - NODE_GAP + Math.max(0, groups - 1) * (GROUP_GAP / 2);
      let x = LEFT + (W - LEFT - RIGHT - w) / 2;
      let prev: Role | null = null;
      for (const n of row) {
        if (prev && prev !== n.role) x += GROUP_GAP / 2;
        pos.set(n.id, { x, y: TOP + (L - 1 - li) * this.rowH });
        x += step;
        prev = n.role;
      }
    }
    return pos;
  }

  /** Draw the pair for view state `v`: each step below does one part of the picture. */
  update(v: ViewState, animate = false): GraphSummary {
    const data = this.data;
    const summary: GraphSummary = { shownNodes: 0, highlighted: 0, edges: 0, glyphs: { both: 0, weaker: 0, stronger: 0, none: 0 } };
    if (!data) return summary;
    const hl = this.highlights(data.nodes, v);
    const shown = this.shownIds(data.nodes, v, hl);
    const { full, dur } = this.placeNodes(v, shown, animate);
    this.drawTitles(v, full.groupX);
    this.drawLayerLabels();
    const shownNodes = data.nodes.filter((n) => shown.has(n.id));
    summary.shownNodes = shownNodes.length;
    const nodeSel = this.drawNodes(v, shownNodes, full.pos, dur);
    this.markHighlights(nodeSel, hl, summary);
    const rmax = this.drawEffectRings(nodeSel, v);
    summary.edges = this.drawEdges(data.edges, v, hl, shown, dur);
    this.svg
      .attr("viewBox", `0 0 ${W} ${TOP + this.layers.length * this.rowH + 10}`)
      .attr("data-pair", `${data.original}-${data.target}`)
      .attr("data-state", data.complete ? "ready" : "partial") // partial: other strengths' edges still loading
      .attr("data-edges", summary.edges)
      .attr("data-rings", v.effectRings ? "1" : "0")
      .attr("data-ring-max", rmax)
      .attr("data-highlighted", summary.highlighted);
    return summary;
  }

  /**
   * What is highlighted, at which strength: one set (`edges`, at strength `edgeS`, selects the
   * connections) or, in compare mode, one per pointer (`weak`, `strong`).
   */
  private highlights(nodes: NodeRow[], v: ViewState): Highlights {
    if (!v.compare) {
      const hl = highlightedNodes(nodes, v.s, v.criterion, v.neuronPct);
      return { edges: hl, edgeS: v.s, weak: null, strong: null, has: (id) => hl.has(id) };
    }
    const weak = highlightedNodes(nodes, v.weaker, v.criterion, v.neuronPct);
    const strong = highlightedNodes(nodes, v.stronger, v.criterion, v.neuronPct);
    const useWeak = v.compareEdges === "weaker";
    return {
      edges: useWeak ? weak : strong,
      edgeS: useWeak ? v.weaker : v.stronger,
      weak,
      strong,
      has: (id) => weak.has(id) || strong.has(id),
    };
  }

  /** The neurons the filter shows: all, the pinned ones, or the highlighted ones. */
  private shownIds(nodes: NodeRow[], v: ViewState, hl: Highlights): Set<string> {
    if (v.filter === "pinned") return new Set(nodes.filter((n) => v.pins.has(n.id)).map((n) => n.id));
    if (v.filter === "highlighted") return new Set(nodes.filter((n) => hl.has(n.id)).map((n) => n.id));
    return new Set(nodes.map((n) => n.id));
  }

  /** Positions for the shown neurons (`this.pos`), and the animation time: only when the set changed. */
  private placeNodes(v: ViewState, shown: Set<string>, animate: boolean): { full: ReturnType<GraphView["fullLayout"]>; dur: number } {
    const full = this.fullLayout();
    const layoutKey = v.filter + ":" + [...shown].sort().join(",");
    const relayout = layoutKey !== this.lastLayoutKey;
    const first = this.lastLayoutKey === "";
    this.lastLayoutKey = layoutKey;
    this.pos = v.filter === "full" ? full.pos : this.compactLayout(shown);
    return { full, dur: animate && relayout && !first ? 1500 : 0 };
  }

  /** Group titles over the role columns (full layout only), cut to fit (fitTitles). */
  private drawTitles(v: ViewState, groupX: Record<Role, [number, number]>): void {
    const titleData =
      v.filter === "full"
        ? ROLES.map((r) => ({
            role: r,
            text: r === "original" ? this.titles.original : r === "target" ? this.titles.target : r === "both" ? "BOTH" : "EXPLOITED BY ATTACK",
            x: (groupX[r][0] + groupX[r][1]) / 2,
          }))
        : [];
    const titles = this.gTitles
      .selectAll<SVGTextElement, (typeof titleData)[number]>("text.group-title")
      .data(titleData, (d) => d.role)
      .join((enter) => {
        const t = enter.append("text");
        t.append("tspan").attr("class", "label");
        t.append("title");
        return t;
      })
      .attr("class", (d) => `group-title ${d.role}`)
      .attr("x", (d) => d.x)
      .attr("y", TOP - 30)
      .attr("text-anchor", "middle")
      .attr("fill", (d) => (d.role === "both" ? "#d9822b" : ROLE_COLOR[d.role]))
      .attr("data-full", (d) => d.text);
    titles.select("title").text((d) => d.text);
    fitTitles(titles.nodes(), titleData.map((d) => ({ ...d, fixed: d.role === "both" || d.role === "exploited" })));
  }

  private drawLayerLabels(): void {
    const L = this.layers.length;
    this.gLayers
      .selectAll<SVGTextElement, string>("text.layer-label")
      .data(this.layers, (d) => d)
      .join("text")
      .attr("class", "layer-label")
      .attr("x", 8)
      .attr("y", (_d, i) => TOP + (L - 1 - i) * this.rowH + this.size / 2 + 4)
      .text((d) => d);
  }

  /** One group per shown neuron (entering at its full-layout place), moved to `this.pos`. */
  private drawNodes(v: ViewState, shownNodes: NodeRow[], fullPos: Map<string, Pos>, dur: number): NodeSel {
    const sz = this.size;
    const self = this;
    const nodeSel = this.gNodes
      .selectAll<SVGGElement, NodeRow>("g.node")
      .data(shownNodes, (d) => d.id)
      .join(
        (enter) => {
          const g = enter
            .append("g")
            .attr("class", (d) => `node ${d.role}`)
            .attr("data-id", (d) => d.id)
            .attr("data-role", (d) => d.role)
            .attr("tabindex", 0)
            .attr("role", "button")
            .attr("aria-label", (d) => `neuron ${d.id}, ${d.role}`)
            .attr("transform", (d) => {
              const p = fullPos.get(d.id)!;
              return `translate(${p.x},${p.y})`;
            });
          g.append("rect").attr("class", "outer").attr("rx", 3).attr("ry", 3);
          g.append("rect").attr("class", "effect-ring").attr("fill", "none").attr("pointer-events", "none").attr("display", "none");
          g.append("rect").attr("class", "inner");
          g.append("text").attr("class", "node-label").attr("text-anchor", "middle");
          g.on("mouseenter", function (_ev, d) {
            self.setHover(d, this as SVGGElement);
          })
            .on("mouseleave", () => self.setHover(null, null))
            .on("focus", function (_ev, d) {
              self.setHover(d, this as SVGGElement);
            })
            .on("blur", () => self.setHover(null, null))
            .on("click", (_ev, d) => self.handlers.click(d))
            .on("keydown", (ev: KeyboardEvent, d) => {
              if (ev.key === "Enter" || ev.key === " ") {
                ev.preventDefault();
                self.handlers.click(d);
              }
            });
          return g;
        },
        // a node leaving and coming back within the fade must not be removed by the old transition
        (update) => update.interrupt().style("opacity", null),
        (exit) => exit.interrupt().transition().duration(dur ? 400 : 0).style("opacity", 0).remove(),
      );
    (dur ? nodeSel.transition().duration(dur) : nodeSel).attr("transform", (d) => {
      const p = this.pos.get(d.id)!;
      return `translate(${p.x},${p.y})`;
    });
    nodeSel
      .select<SVGRectElement>("rect.outer")
      .attr("width", sz)
      .attr("height", sz)
      .attr("fill", (d) => ROLE_COLOR[d.role]);
    nodeSel.classed("pinned", (d) => v.pins.has(d.id));
    nodeSel
      .select<SVGTextElement>("text.node-label")
      .attr("x", sz / 2)
      .attr("y", -4)
      .style("font-size", () => (v.filter === "full" ? null : "9px"))
      .text((d) => String(d.channel));
    return nodeSel;
  }

  /** Highlighted neurons opaque; in compare mode, a glyph per neuron (glyph()); counts into `summary`. */
  private markHighlights(nodeSel: NodeSel, hl: Highlights, summary: GraphSummary): void {
    const sz = this.size;
    if (hl.weak && hl.strong) {
      const [weak, strong] = [hl.weak, hl.strong];
      nodeSel.each(function (d) {
        const gl = glyph(weak.has(d.id), strong.has(d.id));
        summary.glyphs[gl] += 1;
        const g = d3.select(this).attr("data-glyph", gl).attr("data-highlighted", gl === "none" ? "0" : "1");
        g.select("rect.outer").attr("fill-opacity", strong.has(d.id) ? 1 : 0.12);
        const inner = g.select("rect.inner");
        if (gl === "weaker" || gl === "stronger") {
          inner
            .attr("display", null)
            .attr("x", sz / 4)
            .attr("y", sz / 4)
            .attr("width", sz / 2)
            .attr("height", sz / 2)
            .attr("fill", gl === "weaker" ? ROLE_COLOR[d.role] : "#ffffff")
            .attr("data-fill", gl === "weaker" ? "role" : "white");
        } else inner.attr("display", "none").attr("data-fill", null);
      });
      summary.highlighted = summary.glyphs.both + summary.glyphs.weaker + summary.glyphs.stronger;
    } else {
      const on = hl.edges;
      nodeSel.attr("data-glyph", null).attr("data-highlighted", (d) => (on.has(d.id) ? "1" : "0"));
      nodeSel.select("rect.outer").attr("fill-opacity", (d) => (on.has(d.id) ? 1 : 0.1));
      nodeSel.select("rect.inner").attr("display", "none").attr("data-fill", null);
      summary.highlighted = nodeSel.data().filter((n) => on.has(n.id)).length;
    }
  }

  /** Causal effect rings on exploited neurons (the stronger strength in compare mode); returns ringMax. */
  private drawEffectRings(nodeSel: NodeSel, v: ViewState): number {
    const sz = this.size;
    const es = v.compare ? v.stronger : v.s;
    const rmax = ringMax(sz);
    nodeSel.each(function (d) {
      const g = d3.select(this);
      const eff = d.role === "exploited" && es >= 1 ? (d.effect[es - 1] ?? NaN) : NaN;
      g.attr("data-effect", d.role === "exploited" ? String(eff) : null);
      const ring = g.select("rect.effect-ring");
      const w = v.effectRings && Number.isFinite(eff) && eff > 0 ? Math.min(1, eff) * rmax : 0;  // R can exceed 1
      if (w > 0)
        ring
          .attr("display", null)
          .attr("x", w / 2)
          .attr("y", w / 2)
          .attr("width", sz - w)
          .attr("height", sz - w)
          .attr("rx", Math.max(0, 3 - w / 2))
          .attr("stroke-width", w);
      else ring.attr("display", "none").attr("stroke-width", 0);
      g.attr("data-ring", v.effectRings && d.role === "exploited" ? String(w) : null);
    });
    return rmax;
  }

  /** Connections among the shown neurons (all among pinned ones; else the selected ones); returns their count. */
  private drawEdges(edges: EdgeRow[], v: ViewState, hl: Highlights, shown: Set<string>, dur: number): number {
    const sz = this.size;
    const edgeS = hl.edgeS;
    const drawn: EdgeRow[] =
      v.filter === "pinned"
        ? edgesAmong(edges, shown, edgeS)
        : selectedEdges(edges, hl.edges, edgeS, v.criterion, v.edgePct).filter((e) => shown.has(e.src) && shown.has(e.dst));
    this.ensureGradients();
    const path = (e: EdgeRow) => {
      const a = this.pos.get(e.src)!; // lower (source layer)
      const b = this.pos.get(e.dst)!; // upper
      const x0 = a.x + sz / 2,
        y0 = a.y,
        x1 = b.x + sz / 2,
        y1 = b.y + sz;
      const dy = y0 - y1;
      return `M${x0},${y0}C${x0},${y0 - 0.6 * dy} ${x1},${y1 + 0.6 * dy} ${x1},${y1}`;
    };
    const edgeSel = this.gEdges
      .selectAll<SVGPathElement, EdgeRow>("path.edge")
      .data(drawn, (e) => `${e.src}>${e.dst}`)
      .join((enter) =>
        enter
          .append("path")
          .attr("class", "edge")
          .attr("data-src", (e) => e.src)
          .attr("data-dst", (e) => e.dst)
          .attr("d", path),
      );
    edgeSel
      .attr("stroke", (e) => {
        const lo = this.nodeById.get(e.src)!.role;
        const hi = this.nodeById.get(e.dst)!.role;
        return `url(#grad-${e.srcLayerIndex}-${hi}-${lo})`;
      })
      .attr("data-influence", (e) => e.inf[edgeS])
      .attr("stroke-width", (e) => edgeWidth(e.inf[edgeS], this.scales.get(e.srcLayerIndex) ?? 0))
      .classed("flow", (e) => this.hovered !== null && (e.src === this.hovered || e.dst === this.hovered));
    edgeSel.interrupt();
    (dur ? edgeSel.transition().duration(dur) : edgeSel).attr("d", path);
    return drawn.length;
  }

  private ensureGradients(): void {
    const L = this.layers.length;
    const want: { id: string; y1: number; y2: number; hi: Role; lo: Role }[] = [];
    for (let li = 0; li < L - 1; li++)
      for (const hi of ROLES)
        for (const lo of ROLES) {
          const yUpper = TOP + (L - 2 - li) * this.rowH + this.size;
          const yLower = TOP + (L - 1 - li) * this.rowH;
          want.push({ id: `grad-${li}-${hi}-${lo}`, y1: yUpper, y2: yLower, hi, lo });
        }
    const g = this.defs
      .selectAll<SVGLinearGradientElement, (typeof want)[number]>("linearGradient")
      .data(want, (d) => d.id)
      .join((enter) => {
        const lg = enter.append("linearGradient").attr("id", (d) => d.id).attr("gradientUnits", "userSpaceOnUse");
        lg.append("stop").attr("offset", "0%");
        lg.append("stop").attr("offset", "100%");
        return lg;
      });
    g.attr("x1", 0).attr("x2", 0).attr("y1", (d) => d.y1).attr("y2", (d) => d.y2);
    g.select("stop:nth-child(1)").attr("stop-color", (d) => ROLE_COLOR[d.hi]);
    g.select("stop:nth-child(2)").attr("stop-color", (d) => ROLE_COLOR[d.lo]);
  }

  private setHover(n: NodeRow | null, el: SVGGElement | null): void {
    this.hovered = n ? n.id : null;
    this.gNodes.selectAll<SVGGElement, NodeRow>("g.node").classed("hover", (d) => d.id === this.hovered);
    this.gEdges
      .selectAll<SVGPathElement, EdgeRow>("path.edge")
      .classed("flow", (e) => this.hovered !== null && (e.src === this.hovered || e.dst === this.hovered));
    this.handlers.hover(n, el ? el.getBoundingClientRect() : null);
  }
}

const TITLE_GAP = 8;

/** Set each label to `text` with exactly that width budget, cutting it with an ellipsis when longer. */
function fitText(el: SVGTSpanElement, text: string, maxW: number): boolean {
  el.textContent = text;
  if (el.getComputedTextLength() <= maxW) return false;
  let lo = 0;
  let hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    el.textContent = text.slice(0, mid).trimEnd() + "…";
    if (el.getComputedTextLength() <= maxW) lo = mid;
    else hi = mid - 1;
  }
  el.textContent = text.slice(0, lo).trimEnd() + "…";
  return true;
}

/**
 * Group titles are centred over their columns and never overlap: the room between two neighbouring
 * centres is shared so that a title that fits keeps its width (the other gets the rest); the fixed
 * labels BOTH and EXPLOITED BY ATTACK keep theirs before a class name does; two long class names
 * split it evenly. Titles longer than their room are truncated with an ellipsis (the full text is
 * the <title> tooltip and data-full).
 */
function fitTitles(els: SVGTextElement[], data: { text: string; x: number; fixed: boolean }[]): void {
  const n = data.length;
  if (!n) return;
  const labels = els.map((e) => e.querySelector("tspan.label") as SVGTSpanElement);
  const half = labels.map((l, i) => {
    l.textContent = data[i].text;
    return l.getComputedTextLength() / 2;
  });
  const left = data.map(() => Infinity);
  const right = data.map(() => Infinity);
  left[0] = data[0].x - 4;
  right[n - 1] = W - 4 - data[n - 1].x;
  for (let i = 0; i + 1 < n; i++) {
    const j = i + 1;
    const d = Math.abs(data[j].x - data[i].x) - TITLE_GAP;
    const [a, b] = [half[i], half[j]];
    let ai: number;
    if (a + b <= d) ai = d - b;
    else if (data[i].fixed && !data[j].fixed) ai = Math.min(a, d - 3 * TITLE_GAP);
    else if (!data[i].fixed && data[j].fixed) ai = d - Math.min(b, d - 3 * TITLE_GAP);
    else ai = a <= d / 2 ? a : b <= d / 2 ? d - b : d / 2;
    right[i] = Math.max(0, ai);
    left[j] = Math.max(0, d - ai);
  }
  labels.forEach((l, i) => {
    const cut = fitText(l, data[i].text, 2 * Math.min(left[i], right[i]));
    els[i].setAttribute("data-truncated", cut ? "1" : "0");
  });
}
