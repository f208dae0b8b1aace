// The detail view of one neuron: id, feature visualisation, dataset examples, and its median
// activation over attack strengths with the original (green) and target (blue) reference lines.
// A neuron measured alone shows its own causal effect (nodes.effect): the recovery R of the logit
// gap when patching this neuron alone back to its benign value on held-out images, at the
// current strength (a sentence) and at every strength (small bars under the activation chart).
import * as d3 from "d3";
import type { NeuronAssets, NodeRow } from "./data";
import { ROLE_COLOR } from "./graph";

const CW = 230;
const CH = 120;
const M = { top: 10, right: 10, bottom: 28, left: 38 };

export class DetailView {
  constructor(private el: HTMLDivElement) {}

  hide(): void {
    this.el.hidden = true;
    this.el.dataset.id = "";
  }

  /** The neuron's single-neuron defused fraction: a sentence at s and bars over every strength. */
  private effect(n: NodeRow, strengths: number[], s: number, nSuccess: number[]): void {
    const box = document.createElement("div");
    box.className = "effect";
    const v = s >= 1 ? (n.effect[s - 1] ?? NaN) : NaN;
    box.dataset.strength = String(s);
    box.dataset.value = String(v);
    const text = document.createElement("div");
    text.className = "effect-text";
    const e = s >= 1 ? `eps ${strengths[s].toFixed(2)}` : "";
    if (s === 0) text.textContent = "Causal effect: strength 0 is benign; patching needs a successful attack.";
    else if (Number.isFinite(v)) text.textContent = `Patching it alone recovers ${Math.round(100 * v)}% of the logit gap at ${e} (held-out images).`;
    else if (!(nSuccess[s - 1] > 0)) text.textContent = `Causal effect: no successful attack at ${e}.`;
    else text.textContent = `Causal effect: not measured at ${e}.`;
    box.append(text);
    const W = CW;
    const H = 46;
    const svg = d3
      .select(box)
      .append("svg")
      .attr("class", "effect-chart")
      .attr("width", W)
      .attr("height", H)
      .attr("role", "img")
      .attr("aria-label", `causal effect of ${n.id} alone over attack strength`);
    const x = d3
      .scaleLinear()
      .domain([0, d3.max(strengths) ?? 1])
      .range([M.left, W - M.right]);
    const y = d3.scaleLinear().domain([0, 1]).range([H - 6, 6]);
    svg
      .append("g")
      .attr("transform", `translate(${M.left},0)`)
      .call(d3.axisLeft(y).tickValues([0, 1]).tickFormat(d3.format(".0%")).tickSizeOuter(0));
    svg
      .append("line")
      .attr("x1", M.left)
      .attr("x2", W - M.right)
      .attr("y1", y(0))
      .attr("y2", y(0))
      .attr("stroke", "#ccc");
    const pts = n.effect.map((val, i) => ({ val, i: i + 1 })).filter((p) => Number.isFinite(p.val));
    svg
      .selectAll("rect.effect-bar")
      .data(pts)
      .join("rect")
      .attr("class", (p) => (p.i === s ? "effect-bar current" : "effect-bar"))
      .attr("data-strength", (p) => p.i)
      .attr("data-value", (p) => p.val)
      .attr("x", (p) => x(strengths[p.i]) - 3)
      .attr("width", 6)
      .attr("y", (p) => y(p.val))
      .attr("height", (p) => Math.max(0.5, y(0) - y(p.val)))
      .append("title")
      .text((p) => `eps ${strengths[p.i].toFixed(2)}: ${Math.round(100 * p.val)}%`);
    svg
      .append("text")
      .attr("class", "axis-title")
      .attr("x", W - M.right)
      .attr("y", 8)
      .attr("text-anchor", "end")
      .text("effect alone, per strength");
    this.el.append(box);
  }

  /**
   * Show neuron n next to `anchor` (its screen box). strengths: [0, eps1, ...]; s: current index;
   * layerMax: the y-scale top shared by the neuron's layer. assets: the neuron's pictures, undefined
   * (none), null (the index is being read) or "error" (it could not be read).
   */
  show(
    n: NodeRow,
    anchor: DOMRect,
    strengths: number[],
    s: number,
    layerMax: number,
    assets: NeuronAssets | undefined | null | "error",
    causal: { nSuccess: number[] } | null = null,
  ): void {
    const empty = assets === null ? "loading…" : assets === "error" ? "unavailable" : "none";
    if (assets === "error") assets = undefined;
    const el = this.el;
    el.textContent = "";
    el.dataset.id = n.id;
    const head = document.createElement("div");
    head.className = "detail-id";
    head.textContent = n.id;
    const role = document.createElement("span");
    role.className = `role-chip ${n.role}`;
    role.textContent = n.role;
    head.append(" ", role);
    el.append(head);

    const imgs = document.createElement("div");
    imgs.className = "detail-imgs";
    const fv = document.createElement("figure");
    const fvCap = document.createElement("figcaption");
    fvCap.textContent = "Feature vis";
    if (assets?.featureVis) {
      const img = document.createElement("img");
      img.className = "feature-vis";
      img.alt = `feature visualisation of ${n.id}`;
      img.addEventListener("load", () => img.classList.toggle("pixelated", img.naturalWidth < 64));
      img.src = assets.featureVis;
      fv.append(img);
    } else {
      const na = document.createElement("div");
      na.className = "no-img";
      na.textContent = empty;
      fv.append(na);
    }
    fv.append(fvCap);
    const ex = document.createElement("figure");
    const grid = document.createElement("div");
    grid.className = "patch-grid";
    for (const src of (assets?.patches ?? []).slice(0, 4)) {
      const img = document.createElement("img");
      img.className = "patch";
      img.alt = `dataset example for ${n.id}`;
      img.src = src;
      grid.append(img);
    }
    if (!grid.childElementCount) {
      const na = document.createElement("div");
      na.className = "no-img";
      na.textContent = empty;
      grid.append(na);
    }
    const exCap = document.createElement("figcaption");
    exCap.textContent = "Examples from data";
    ex.append(grid, exCap);
    imgs.append(fv, ex);
    el.append(imgs);

    // activation vs strength
    const svg = d3
      .select(el)
      .append("svg")
      .attr("class", "act-chart")
      .attr("width", CW)
      .attr("height", CH)
      .attr("role", "img")
      .attr("aria-label", `median activation of ${n.id} over attack strength`);
    const x = d3
      .scaleLinear()
      .domain([0, d3.max(strengths) ?? 1])
      .range([M.left, CW - M.right]);
    const y = d3
      .scaleLinear()
      .domain([0, layerMax > 0 ? layerMax : 1])
      .nice()
      .range([CH - M.bottom, M.top]);
    svg
      .append("g")
      .attr("transform", `translate(0,${CH - M.bottom})`)
      .call(d3.axisBottom(x).ticks(5).tickSizeOuter(0));
    svg.append("g").attr("transform", `translate(${M.left},0)`).call(d3.axisLeft(y).ticks(4).tickSizeOuter(0));
    svg
      .append("text")
      .attr("class", "axis-title")
      .attr("x", (M.left + CW - M.right) / 2)
      .attr("y", CH - 2)
      .attr("text-anchor", "middle")
      .text("attack strength");
    svg
      .append("text")
      .attr("class", "axis-title")
      .attr("transform", `translate(10,${(CH - M.bottom + M.top) / 2}) rotate(-90)`)
      .attr("text-anchor", "middle")
      .text("Med. Activ.");
    const ref = (v: number, color: string, cls: string, label: string) => {
      if (!Number.isFinite(v)) return;
      svg
        .append("line")
        .attr("class", cls)
        .attr("x1", M.left)
        .attr("x2", CW - M.right)
        .attr("y1", y(v))
        .attr("y2", y(v))
        .attr("stroke", color)
        .attr("stroke-width", 1.5)
        .attr("stroke-dasharray", "4 2");
      svg
        .append("text")
        .attr("class", "ref-label")
        .attr("x", CW - M.right)
        .attr("y", y(v) - 3)
        .attr("text-anchor", "end")
        .attr("fill", color)
        .text(label);
    };
    ref(n.act[0], "#4daf4a", "ref-original", "original");
    ref(n.target, ROLE_COLOR.target, "ref-target", "target");
    const pts = strengths.map((e, i) => ({ e, v: n.act[i], i })).filter((p) => Number.isFinite(p.v));
    svg
      .append("path")
      .attr("class", "act-line")
      .attr("fill", "none")
      .attr("stroke", "#888")
      .attr("stroke-width", 1.5)
      .attr(
        "d",
        d3
          .line<{ e: number; v: number }>()
          .x((p) => x(p.e))
          .y((p) => y(p.v))(pts),
      );
    svg
      .selectAll("circle.act-dot")
      .data(pts)
      .join("circle")
      .attr("class", (p) => (p.i === s ? "act-dot current" : "act-dot"))
      .attr("cx", (p) => x(p.e))
      .attr("cy", (p) => y(p.v))
      .attr("r", (p) => (p.i === s ? 5 : 2.5))
      .attr("fill", (p) => (p.i === s ? ROLE_COLOR[n.role] : "#888"))
      .attr("stroke", (p) => (p.i === s ? "#222" : "none"));
    if (!Number.isFinite(n.act[s])) {
      svg
        .append("text")
        .attr("class", "no-success")
        .attr("x", x(strengths[s]))
        .attr("y", M.top + 10)
        .attr("text-anchor", "middle")
        .text("no successful attack");
    }

    if (causal && n.role === "exploited") this.effect(n, strengths, s, causal.nSuccess);

    // place it right of the neuron, inside the graph panel
    el.hidden = false;
    const host = el.parentElement!.getBoundingClientRect();
    const w = el.offsetWidth;
    const h = el.offsetHeight;
    let left = anchor.right - host.left + 12;
    if (left + w > host.width) left = anchor.left - host.left - w - 12;
    let top = anchor.top - host.top - h / 2;
    top = Math.max(4, Math.min(host.height - h - 4, top));
    el.style.left = `${Math.max(4, left)}px`;
    el.style.top = `${top}px`;
  }
}
