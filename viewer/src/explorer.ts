// The pair explorer: every computed pair in a sortable table (success rate at a chosen strength,
// exploited-neuron count, sizes); clicking a row (or Enter on it) opens that pair.
import type { PairRow } from "./data";

type Key = "original" | "target" | "success" | "exploited" | "nodes" | "edges";

export class PairExplorer {
  private key: Key = "success";
  private desc = true;
  private sIndex = 0; // index into strengths (success rates have no strength-0 entry)
  private pairs: PairRow[] = [];
  private names: Map<number, string> = new Map();
  private strengths: number[] = [];

  constructor(
    private dialog: HTMLElement,
    private onOpen: (p: PairRow) => void,
  ) {
    const table = dialog.querySelector("table")!;
    table.querySelectorAll<HTMLTableCellElement>("th[data-key]").forEach((th) => {
      const sort = () => {
        const k = th.dataset.key as Key;
        if (this.key === k) this.desc = !this.desc;
        else {
          this.key = k;
          this.desc = k !== "original" && k !== "target";
        }
        this.render();
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          sort();
        }
      });
    });
    dialog.querySelector<HTMLSelectElement>("#explorer-strength")!.addEventListener("change", (e) => {
      this.sIndex = Number((e.target as HTMLSelectElement).value);
      this.render();
    });
    dialog.querySelector<HTMLInputElement>("#explorer-search")!.addEventListener("input", () => this.render());
    dialog.querySelector("#close-explorer")!.addEventListener("click", () => this.close());
    dialog.addEventListener("click", (e) => {
      if (e.target === dialog) this.close();
    });
  }

  setData(pairs: PairRow[], names: Map<number, string>, strengths: number[]): void {
    this.pairs = pairs;
    this.names = names;
    this.strengths = strengths;
    const sel = this.dialog.querySelector<HTMLSelectElement>("#explorer-strength")!;
    sel.textContent = "";
    strengths.forEach((e, i) => {
      const o = document.createElement("option");
      o.value = String(i);
      o.textContent = e.toFixed(2);
      sel.append(o);
    });
    this.sIndex = Math.min(this.sIndex, strengths.length - 1);
    sel.value = String(this.sIndex);
  }

  /** Choose the strength column to match the main slider (strength index s >= 1). */
  setStrength(s: number): void {
    if (s >= 1) {
      this.sIndex = s - 1;
      this.dialog.querySelector<HTMLSelectElement>("#explorer-strength")!.value = String(this.sIndex);
    }
  }

  get isOpen(): boolean {
    return !this.dialog.hidden;
  }

  open(): void {
    this.dialog.hidden = false;
    this.render();
    this.dialog.querySelector<HTMLInputElement>("#explorer-search")!.focus();
  }

  close(): void {
    this.dialog.hidden = true;
  }

  private value(p: PairRow, k: Key): number | string {
    switch (k) {
      case "original":
        return this.names.get(p.original) ?? String(p.original);
      case "target":
        return this.names.get(p.target) ?? String(p.target);
      case "success":
        return p.successRate[this.sIndex] ?? NaN;
      case "exploited":
        return p.nExploited;
      case "nodes":
        return p.nNodes;
      case "edges":
        return p.nEdges;
    }
  }

  render(): void {
    const q = this.dialog.querySelector<HTMLInputElement>("#explorer-search")!.value.trim().toLowerCase();
    const rows = this.pairs.filter((p) => {
      if (!q) return true;
      const a = (this.names.get(p.original) ?? "").toLowerCase();
      const b = (this.names.get(p.target) ?? "").toLowerCase();
      return a.includes(q) || b.includes(q);
    });
    const k = this.key;
    const dir = this.desc ? -1 : 1;
    rows.sort((a, b) => {
      const va = this.value(a, k);
      const vb = this.value(b, k);
      if (typeof va === "number" && typeof vb === "number") {
        const na = Number.isFinite(va),
          nb = Number.isFinite(vb);
        if (na !== nb) return na ? -1 : 1; // missing values last
        if (va !== vb) return dir * (va - vb);
      } else if (va !== vb) return dir * String(va).localeCompare(String(vb));
      return a.original - b.original || a.target - b.target;
    });
    this.dialog.querySelectorAll<HTMLTableCellElement>("th[data-key]").forEach((th) => {
      const on = th.dataset.key === k;
      th.setAttribute("aria-sort", on ? (this.desc ? "descending" : "ascending") : "none");
    });
    const tbody = this.dialog.querySelector("tbody")!;
    tbody.textContent = "";
    for (const p of rows) {
      const tr = document.createElement("tr");
      tr.tabIndex = 0;
      tr.dataset.original = String(p.original);
      tr.dataset.target = String(p.target);
      const rate = p.successRate[this.sIndex];
      const n = p.nSuccess[this.sIndex];
      const cells: [string, string][] = [
        [this.names.get(p.original) ?? String(p.original), ""],
        [this.names.get(p.target) ?? String(p.target), ""],
        [Number.isFinite(rate) ? `${(rate * 100).toFixed(0)}% (${n}/${p.nImages})` : "—", "num"],
        [String(p.nExploited), "num"],
        [String(p.nNodes), "num"],
        [String(p.nEdges), "num"],
      ];
      for (const [text, cls] of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.append(td);
      }
      const bar = document.createElement("span");
      bar.className = "rate-bar";
      bar.style.width = `${Number.isFinite(rate) ? Math.round(rate * 60) : 0}px`;
      tr.children[2].prepend(bar);
      const go = () => {
        this.close();
        this.onOpen(p);
      };
      tr.addEventListener("click", go);
      tr.addEventListener("keydown", (e) => {
        if (e.key === "Enter") go();
      });
      tbody.append(tr);
    }
    void this.strengths;
  }
}
