// Which neurons and connections are highlighted: pure functions of the pair's data and the
// controls, so the graph, compare mode and the tests all share one rule.
//
// Rule (the original Bluff's, with two documented choices):
// - Neurons: per layer, the top floor(count * neuronPct / 100) displayed neurons by the criterion's
//   score at the strength: activated = activation; excited = activation - benign activation;
//   inhibited = its negative; changed = |difference|. Strength index 0 is the benign original
//   (its "activated" ranking is by benign activation; the change criteria score nothing there, so
//   nothing is highlighted: nothing has changed). A neuron with no successfully attacked image at
//   that strength (NaN) is never highlighted. Ties break by role order then channel.
// - Connections: candidates join two highlighted neurons and transmit something at the strength
//   (influence > 0). Per layer pair they are ranked by influence (activated), influence - benign
//   influence (excited; inhibited reversed) or |difference| (changed) and the top
//   round(count * edgePct / 100) are shown.
import type { EdgeRow, NodeRow, Role } from "./data";

export type Criterion = "activated" | "changed" | "excited" | "inhibited";
export const CRITERIA: Criterion[] = ["activated", "changed", "excited", "inhibited"];

const ROLE_ORDER: Record<Role, number> = { original: 0, both: 1, target: 2, exploited: 3 };

/** A condition series' score at strength index s: [0] is the benign original, [s] the attacked. */
function seriesScore(xs: number[], s: number, c: Criterion): number {
  const a = xs[s];
  if (!Number.isFinite(a)) return NaN;
  if (c === "activated") return a;
  if (s === 0) return NaN;
  const d = a - xs[0];
  if (c === "excited") return d;
  if (c === "inhibited") return -d;
  return Math.abs(d);
}

export function nodeScore(n: NodeRow, s: number, c: Criterion): number {
  return seriesScore(n.act, s, c);
}

export function edgeScore(e: EdgeRow, s: number, c: Criterion): number {
  return seriesScore(e.inf, s, c);
}

export function highlightedNodes(nodes: NodeRow[], s: number, c: Criterion, pct: number): Set<string> {
  const byLayer = new Map<number, NodeRow[]>();
  for (const n of nodes) {
    let l = byLayer.get(n.layerIndex);
    if (!l) byLayer.set(n.layerIndex, (l = []));
    l.push(n);
  }
  const out = new Set<string>();
  for (const layerNodes of byLayer.values()) {
    const take = Math.floor((layerNodes.length * pct) / 100);
    const scored = layerNodes
      .map((n) => ({ n, v: nodeScore(n, s, c) }))
      .filter((x) => Number.isFinite(x.v))
      .sort((a, b) => b.v - a.v || ROLE_ORDER[a.n.role] - ROLE_ORDER[b.n.role] || a.n.channel - b.n.channel);
    for (const x of scored.slice(0, take)) out.add(x.n.id);
  }
  return out;
}

export function selectedEdges(
  edges: EdgeRow[],
  highlighted: Set<string>,
  s: number,
  c: Criterion,
  pct: number,
): EdgeRow[] {
  const byPair = new Map<number, { e: EdgeRow; v: number }[]>();
  for (const e of edges) {
    if (!highlighted.has(e.src) || !highlighted.has(e.dst)) continue;
    if (!(e.inf[s] > 0)) continue;
    const v = edgeScore(e, s, c);
    if (!Number.isFinite(v)) continue;
    let l = byPair.get(e.srcLayerIndex);
    if (!l) byPair.set(e.srcLayerIndex, (l = []));
    l.push({ e, v });
  }
  const out: EdgeRow[] = [];
  for (const list of byPair.values()) {
    const take = Math.round((list.length * pct) / 100);
    list.sort((a, b) => b.v - a.v || (a.e.src < b.e.src ? -1 : a.e.src > b.e.src ? 1 : 0) || (a.e.dst < b.e.dst ? -1 : a.e.dst > b.e.dst ? 1 : 0));
    for (const x of list.slice(0, take)) out.push(x.e);
  }
  return out;
}

/** Edges among a fixed set of shown neurons (pinned-only view): every one that transmits at s. */
export function edgesAmong(edges: EdgeRow[], shown: Set<string>, s: number): EdgeRow[] {
  return edges.filter((e) => shown.has(e.src) && shown.has(e.dst) && e.inf[s] > 0);
}

/** Per layer pair, the largest influence over every condition: widths are comparable across strengths. */
export function widthScales(edges: EdgeRow[]): Map<number, number> {
  const m = new Map<number, number>();
  for (const e of edges) {
    let mx = m.get(e.srcLayerIndex) ?? 0;
    for (const v of e.inf) if (Number.isFinite(v) && v > mx) mx = v;
    if (Number.isFinite(e.infTarget) && e.infTarget > mx) mx = e.infTarget;
    m.set(e.srcLayerIndex, mx);
  }
  return m;
}

export const MAX_EDGE_WIDTH = 4;
export const MIN_EDGE_WIDTH = 0.5;

/** Stroke width: linear in influence, 0..4 px per layer pair, never thinner than 0.5 px. */
export function edgeWidth(inf: number, layerMax: number): number {
  if (!(layerMax > 0) || !(inf > 0)) return MIN_EDGE_WIDTH;
  return Math.max(MIN_EDGE_WIDTH, (MAX_EDGE_WIDTH * inf) / layerMax);
}

/** Compare-mode glyph of a neuron from its highlight state at the weaker and stronger strengths. */
export type Glyph = "both" | "weaker" | "stronger" | "none";
export function glyph(weak: boolean, strong: boolean): Glyph {
  return weak && strong ? "both" : weak ? "weaker" : strong ? "stronger" : "none";
}
