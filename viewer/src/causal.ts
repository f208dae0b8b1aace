// The causal panel: what activation patching (docs/FORMAT.md causal/) says about the chosen pair at
// the chosen strength. A sentence for the "all" row (every exploited neuron patched at once, next to
// the random and "both" controls) and a small table of bars per layer. Everything is set with
// textContent: class names and layer names are data.
import type { CausalRow, PairRow } from "./data";

export type CausalSet = "exploited" | "random" | "both";
export const CAUSAL_SETS: CausalSet[] = ["exploited", "random", "both"];

/** "71%": a defused fraction as a whole percentage. */
export const pct = (v: number) => `${Math.round(100 * v)}%`;
const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

export function causalValue(r: CausalRow, set: CausalSet, i: number): number {
  const xs = set === "exploited" ? r.defusedExploited : set === "random" ? r.defusedRandom : r.defusedBoth;
  const v = xs[i];
  return v === undefined ? NaN : v;
}

export function causalCount(r: CausalRow, set: CausalSet): number {
  return set === "exploited" ? r.nExploited : set === "random" ? r.nRandom : r.nBoth;
}

/**
 * The panel's sentence for the pair at strength index s (0 = benign, i = strengths[i-1]).
 * `all`: the pair's causal row "all" (undefined when the pair has none).
 */
export function causalSentence(all: CausalRow | undefined, pair: PairRow, strengths: number[], s: number): string {
  if (s === 0)
    return "Strength 0 shows benign images: patching needs a successful attack. Move the strength slider right to see how many attacks patching the exploited neurons undoes.";
  const e = `eps ${strengths[s - 1].toFixed(2)}`;
  if (!(pair.nImages > 0)) return "No image of the original class is classified correctly, so nothing was attacked or patched.";
  const nS = pair.nSuccess[s - 1];
  if (!(nS > 0)) return `No attack succeeded at ${e}: there is no successful attack to undo.`;
  if (!all) return "No activation-patching results for this pair.";
  if (!(all.nExploited > 0)) return "This pair has no exploited neurons: there is nothing to patch.";
  const x = causalValue(all, "exploited", s - 1);
  if (!Number.isFinite(x)) return `No patching result at ${e}.`;
  const r = causalValue(all, "random", s - 1);
  const b = causalValue(all, "both", s - 1);
  const ctrlR =
    all.nRandom > 0 && Number.isFinite(r) ? `${plural(all.nRandom, "random displayed neuron")}: ${pct(r)}` : "no random control: no other displayed neuron";
  const ctrlB = all.nBoth > 0 && Number.isFinite(b) ? `top ${plural(all.nBoth, "'both' neuron")}: ${pct(b)}` : "no 'both' neurons to compare";
  const back = all.nExploited === 1 ? "its benign value" : "their benign values";
  return (
    `Patching the ${plural(all.nExploited, "exploited neuron")} back to ${back} undoes ${pct(x)} of the ` +
    `${plural(nS, "successful attack")} at ${e} (${ctrlR}; ${ctrlB}).`
  );
}

/** Why a cell has no value (its tooltip). */
function emptyWhy(r: CausalRow, set: CausalSet, pair: PairRow, s: number): string {
  if (!(pair.nSuccess[s - 1] > 0)) return "no successful attack at this strength";
  if (!(causalCount(r, set) > 0))
    return set === "exploited"
      ? r.layer === "all"
        ? "no exploited neuron"
        : "no exploited neuron in this layer"
      : set === "random"
        ? "no neuron to draw a random control from"
        : "no 'both' neuron to compare";
  return "no result";
}

export interface CausalView {
  s: number;
  compare: boolean;
  weaker: number;
  stronger: number;
}

export class CausalPanel {
  private note: HTMLElement;
  private body: HTMLElement;
  private text: HTMLElement;
  private table: HTMLTableElement;
  private rows: CausalRow[] | null = null;

  constructor(private el: HTMLElement) {
    this.note = el.querySelector("#causal-note")!;
    this.body = el.querySelector("#causal-body")!;
    this.text = el.querySelector("#causal-text")!;
    this.table = el.querySelector("#causal-table")!;
  }

  /** No panel: the run did not patch (manifest causal: false) or the root has no causal files. */
  off(note: string, state: "off" | "missing" | "error"): void {
    this.rows = null;
    this.el.dataset.state = state;
    this.note.textContent = note;
    this.note.hidden = false;
    this.body.hidden = true;
  }

  loading(): void {
    this.rows = null;
    this.el.dataset.state = "loading";
    this.note.textContent = "Reading the activation-patching results…";
    this.note.hidden = false;
    this.body.hidden = true;
  }

  clear(): void {
    this.rows = null;
    this.el.dataset.state = "empty";
    this.note.hidden = true;
    this.body.hidden = true;
  }

  setRows(rows: CausalRow[]): void {
    this.rows = rows;
    this.el.dataset.state = "ready";
    this.note.hidden = true;
    this.body.hidden = false;
  }

  get hasRows(): boolean {
    return this.rows !== null;
  }

  render(pair: PairRow | null, strengths: number[], v: CausalView): void {
    if (!pair || !this.rows) return;
    const rows = this.rows;
    const all = rows.find((r) => r.layer === "all");
    const shown = v.compare ? [v.weaker, v.stronger] : [v.s];
    this.text.textContent = "";
    if (!rows.length) {
      const p = document.createElement("p");
      p.className = "causal-sentence";
      p.textContent = "No activation-patching results for this pair.";
      this.text.append(p);
    } else
      shown.forEach((s, k) => {
        const p = document.createElement("p");
        p.className = "causal-sentence";
        p.dataset.strength = String(s);
        const lead = v.compare ? `${k === 0 ? "Weaker" : "Stronger"}, eps ${strengths[s - 1].toFixed(2)}: ` : "";
        if (lead) {
          const b = document.createElement("strong");
          b.textContent = lead;
          p.append(b);
        }
        p.append(document.createTextNode(causalSentence(all, pair, strengths, s)));
        this.text.append(p);
      });
    // the table: only where some shown strength has a successful attack
    const useful = rows.length > 0 && shown.some((s) => s >= 1 && pair.nSuccess[s - 1] > 0);
    this.table.hidden = !useful;
    this.el.querySelector<HTMLElement>("#causal-table-note")!.hidden = !useful;
    const tbody = this.table.tBodies[0];
    tbody.textContent = "";
    if (!useful) return;
    this.table.classList.toggle("compare", v.compare);
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.dataset.layer = r.layer;
      if (r.layer === "all") tr.className = "all";
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = r.layer === "all" ? "all layers" : r.layer;
      tr.append(th);
      for (const set of CAUSAL_SETS) {
        const td = document.createElement("td");
        td.className = `causal-cell ${set}`;
        td.dataset.set = set;
        td.dataset.layer = r.layer;
        const n = causalCount(r, set);
        td.dataset.n = String(n);
        const vals = shown.map((s) => causalValue(r, set, s - 1));
        td.dataset.value = String(vals[vals.length - 1]);
        if (v.compare) td.dataset.weaker = String(vals[0]);
        const label = document.createElement("div");
        label.className = "causal-label";
        const fmt = (x: number) => (Number.isFinite(x) ? pct(x) : "—");
        label.textContent = `${vals.map(fmt).join(" → ")} (${n})`;
        td.append(label);
        vals.forEach((x, k) => {
          const bar = document.createElement("div");
          bar.className = `causal-bar${v.compare && k === 0 ? " weaker" : ""}`;
          bar.style.width = `${Number.isFinite(x) ? Math.round(100 * x) : 0}%`;
          td.append(bar);
        });
        const why = vals.map((x, k) => (Number.isFinite(x) ? null : emptyWhy(r, set, pair, shown[k])));
        const what =
          set === "exploited" ? `the ${plural(n, "exploited neuron")}` : set === "random" ? `${plural(n, "random displayed neuron")}` : `the top ${plural(n, "'both' neuron")}`;
        td.title = shown
          .map((s, k) => `eps ${strengths[s - 1].toFixed(2)}: ${why[k] ?? `patching ${what} undoes ${fmt(vals[k])} of the successful attacks`}`)
          .join("\n");
        tr.append(td);
      }
      tbody.append(tr);
    }
  }
}
