// The pair explorer: every computed pair, one page (PAGE_ROWS rows) at a time, sorted by success
// rate at a strength (descending or ascending) or by exploited-neuron count. Clicking a row (or
// Enter on it) opens that pair.
//
// Where the rows come from (docs/FORMAT.md), so no view ever reads all pairs:
// - no filter: rankings/<key>.parquet, only the rows of the page (hyparquet's offset index). An
//   ascending page reads the finite rows backwards (row n_valid-1 first), then the NaN rows;
// - an original filter: that original's pair_index partition, sorted in memory the same way
//   (value descending, then target; NaN last; ascending = the finite rows reversed, then NaN);
// - a target filter alone: the overview matrix's column of that target at the strength
//   (success rounded to 1/254), so only sorting by success is possible there.
// The column that is not the sort key (exploited count when sorting by success, and the exact
// success counts) comes from the pair_index partitions of the originals on the page, read after
// the page is drawn, at most a few at a time.
import type { ClassInfo, PairRow } from "./data";
import {
  DataError,
  OVERVIEW_MISSING,
  OVERVIEW_SCALE,
  loadOverview,
  loadPartition,
  loadedPartition,
  rankingInfo,
  rankingKey,
  readRanking,
} from "./data";
import { Picker, fillStrengths } from "./picker";

export type SortBy = "success" | "exploited";
export const PAGE_ROWS = 50;
const FILL_CONCURRENCY = 4;

interface Row {
  original: number;
  target: number;
  /** the sort key's value (NaN: no value) */
  value: number;
  /** true when value is an overview byte / 254 (approximate) */
  approx?: boolean;
}

/** value descending then (original, target) ascending, NaN last; ascending = finite part reversed. */
export function sortRows(rows: Row[], desc: boolean): Row[] {
  const valid = rows.filter((r) => Number.isFinite(r.value));
  const nan = rows.filter((r) => !Number.isFinite(r.value));
  valid.sort((a, b) => b.value - a.value || a.original - b.original || a.target - b.target);
  nan.sort((a, b) => a.original - b.original || a.target - b.target);
  if (!desc) valid.reverse();
  return [...valid, ...nan];
}

export class PairExplorer {
  by: SortBy = "success";
  desc = true;
  sIndex = 0; // index into strengths (0-based, as in rankings/success-<i>)
  page = 0;
  filterOriginal: number | null = null;
  filterTarget: number | null = null;
  total = 0;
  private token = 0;
  private root = "";
  private names = new Map<number, string>();
  private classes: ClassInfo[] = [];
  private strengths: number[] = [];
  private origFilter: Picker;
  private targetFilter: Picker;
  private tbody: HTMLTableSectionElement;
  private msg: HTMLElement;
  private rangeText: HTMLElement;

  constructor(
    private dialog: HTMLElement,
    private onOpen: (original: number, target: number) => void,
  ) {
    this.tbody = dialog.querySelector("tbody")!;
    this.msg = dialog.querySelector("#explorer-msg")!;
    this.rangeText = dialog.querySelector("#explorer-range")!;
    dialog.querySelectorAll<HTMLTableCellElement>("th[data-key]").forEach((th) => {
      const sort = () => {
        const k = th.dataset.key as SortBy;
        if (this.by === k) this.desc = !this.desc;
        else {
          this.by = k;
          this.desc = true;
        }
        this.page = 0;
        void this.render();
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
      this.page = 0;
      void this.render();
    });
    this.origFilter = new Picker(dialog.querySelector("#explorer-original")!, "any original", (v) => {
      this.filterOriginal = v < 0 ? null : v;
      this.page = 0;
      void this.render();
    }, "original filter");
    this.targetFilter = new Picker(dialog.querySelector("#explorer-target")!, "any target", (v) => {
      this.filterTarget = v < 0 ? null : v;
      this.page = 0;
      void this.render();
    }, "target filter");
    const go = (id: string, f: () => number) =>
      dialog.querySelector(id)!.addEventListener("click", () => {
        this.page = Math.max(0, Math.min(this.lastPage(), f()));
        void this.render();
      });
    go("#explorer-first", () => 0);
    go("#explorer-prev", () => this.page - 1);
    go("#explorer-next", () => this.page + 1);
    go("#explorer-last", () => this.lastPage());
    dialog.addEventListener("keydown", (e) => {
      const t = e.target as HTMLElement;
      if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement) return;
      if (e.key === "PageDown" || e.key === "PageUp") {
        e.preventDefault();
        this.page = Math.max(0, Math.min(this.lastPage(), this.page + (e.key === "PageDown" ? 1 : -1)));
        void this.render();
      }
    });
    dialog.querySelector("#close-explorer")!.addEventListener("click", () => this.close());
    dialog.addEventListener("click", (e) => {
      if (e.target === dialog) this.close();
    });
  }

  setData(root: string, classes: ClassInfo[], strengths: number[]): void {
    this.root = root;
    this.classes = classes;
    this.names = new Map(classes.map((c) => [c.id, c.name]));
    this.strengths = strengths;
    this.sIndex = Math.min(this.sIndex, strengths.length - 1);
    fillStrengths(this.dialog.querySelector<HTMLSelectElement>("#explorer-strength")!, strengths, this.sIndex);
    const opts = classes.map((c) => ({ value: c.id, label: c.name, detail: c.wnid }));
    this.origFilter.setOptions(
      [
        { value: -1, label: "any original" },
        ...opts.map((o, i) => ({ ...o, disabled: classes[i].nAsOriginal === 0, note: classes[i].nAsOriginal === 0 ? "not computed" : undefined })),
      ],
      -1,
    );
    this.targetFilter.setOptions([{ value: -1, label: "any target" }, ...opts], -1);
  }

  /** Follow the main strength slider (strength index s >= 1). */
  setStrength(s: number): void {
    if (s >= 1 && s - 1 !== this.sIndex) {
      this.sIndex = s - 1;
      this.dialog.querySelector<HTMLSelectElement>("#explorer-strength")!.value = String(this.sIndex);
      if (this.isOpen) {
        this.page = 0;
        void this.render();
      }
    }
  }

  get isOpen(): boolean {
    return !this.dialog.hidden;
  }

  open(): void {
    this.dialog.hidden = false;
    void this.render();
    this.dialog.querySelector<HTMLElement>("th[data-key=success]")!.focus();
  }

  close(): void {
    this.dialog.hidden = true;
  }

  /**
   * Open filtered to an original and/or a target (links from the neuron atlas), at strength index
   * sIndex (0-based) when given: the pairs of an original sorted by exploited neurons, the pairs
   * into a target alone by success (the only sort offered there).
   */
  openFiltered(original: number | null, target: number | null, sIndex?: number): void {
    if (sIndex !== undefined && sIndex >= 0 && sIndex < this.strengths.length) {
      this.sIndex = sIndex;
      this.dialog.querySelector<HTMLSelectElement>("#explorer-strength")!.value = String(sIndex);
    }
    this.filterOriginal = original;
    this.filterTarget = target;
    this.by = original !== null ? "exploited" : "success";
    this.desc = true;
    this.page = 0;
    this.open();
  }

  private lastPage(): number {
    return Math.max(0, Math.ceil(this.total / PAGE_ROWS) - 1);
  }

  private name(c: number): string {
    return this.names.get(c) ?? `class ${c}`;
  }

  /** The rows of the current page, and the total number of rows. */
  private async pageRows(): Promise<{ rows: Row[]; total: number }> {
    const a = this.page * PAGE_ROWS;
    const fo = this.filterOriginal;
    const ft = this.filterTarget;
    const val = (p: PairRow) => (this.by === "success" ? (p.successRate[this.sIndex] ?? NaN) : p.nExploited);
    if (fo !== null) {
      let pairs = await loadPartition(this.root, fo);
      if (ft !== null) pairs = pairs.filter((p) => p.target === ft);
      const rows = sortRows(pairs.map((p) => ({ original: fo, target: p.target, value: val(p) })), this.desc);
      return { rows: rows.slice(a, a + PAGE_ROWS), total: rows.length };
    }
    if (ft !== null) {
      if (this.by === "exploited")
        throw new Error("Sorting the pairs into one target by exploited neurons needs every original's index: also filter by an original, or sort by success.");
      const ov = await loadOverview(this.root, this.classes.length, this.sIndex);
      const n = ov.n;
      const rows: Row[] = [];
      for (let o = 0; o < n; o++) {
        const b = ov.cells[o * n + ft];
        if (o !== ft && b !== OVERVIEW_MISSING) rows.push({ original: o, target: ft, value: b / OVERVIEW_SCALE, approx: true });
      }
      const sorted = sortRows(rows, this.desc);
      return { rows: sorted.slice(a, a + PAGE_ROWS), total: sorted.length };
    }
    const key = rankingKey(this.by, this.sIndex);
    const info = await rankingInfo(this.root, key);
    const b = Math.min(a + PAGE_ROWS, info.rows);
    if (this.desc) return { rows: await readRanking(this.root, key, a, b), total: info.rows };
    // ascending: positions [0, n_valid) are file rows n_valid-1 .. 0, then the NaN rows in file order
    const nv = info.nValid;
    const [validPart, nanPart] = await Promise.all([
      a < nv ? readRanking(this.root, key, nv - Math.min(b, nv), nv - a) : Promise.resolve([]),
      b > nv ? readRanking(this.root, key, Math.max(a, nv), b) : Promise.resolve([]),
    ]);
    return { rows: [...validPart.reverse(), ...nanPart], total: info.rows };
  }

  async render(): Promise<void> {
    const tok = ++this.token;
    const t0 = performance.now();
    const d = this.dialog;
    d.dataset.state = "loading";
    this.origFilter.setValue(this.filterOriginal ?? -1);
    this.targetFilter.setValue(this.filterTarget ?? -1);
    d.querySelectorAll<HTMLTableCellElement>("th[data-key]").forEach((th) => {
      th.setAttribute("aria-sort", th.dataset.key === this.by ? (this.desc ? "descending" : "ascending") : "none");
    });
    d.querySelector("#explorer-success-head")!.textContent = `Success at eps ${this.strengths[this.sIndex]?.toFixed(2) ?? "?"}`;
    let res: { rows: Row[]; total: number };
    try {
      res = await this.pageRows();
    } catch (e) {
      if (tok !== this.token) return;
      this.tbody.textContent = "";
      this.total = 0;
      this.msg.textContent = e instanceof DataError ? `${e.file}: ${e.message}` : (e as Error).message;
      this.msg.hidden = false;
      this.rangeText.textContent = "";
      d.dataset.state = "error";
      return;
    }
    if (tok !== this.token) return;
    this.total = res.total;
    if (this.page > this.lastPage()) {
      this.page = this.lastPage();
      return this.render();
    }
    this.msg.hidden = true;
    const a = this.page * PAGE_ROWS;
    this.rangeText.textContent = res.total
      ? `${(a + 1).toLocaleString("en")}–${(a + res.rows.length).toLocaleString("en")} of ${res.total.toLocaleString("en")} pairs`
      : "no pairs";
    for (const [id, off] of [
      ["#explorer-first", true],
      ["#explorer-prev", true],
      ["#explorer-next", false],
      ["#explorer-last", false],
    ] as [string, boolean][])
      (d.querySelector(id) as HTMLButtonElement).disabled = off ? this.page === 0 : this.page >= this.lastPage();
    this.tbody.textContent = "";
    const trs = res.rows.map((r) => this.row(r));
    this.tbody.append(...trs);
    d.dataset.page = String(this.page);
    d.dataset.total = String(res.total);
    d.dataset.ms = String(Math.round(performance.now() - t0));
    d.dataset.state = "ready";
    await this.fill(tok, res.rows, trs);
    if (tok !== this.token) return;
    d.dataset.state = "filled";
    this.prefetch();
  }

  private prefetched = false;

  /**
   * Once the first page is complete: read the footers of the other rankings (16 KiB each) in the
   * background, two at a time, so that changing the strength or the sort key costs one round trip.
   */
  private prefetch(): void {
    if (this.prefetched) return;
    this.prefetched = true;
    const keys = [...this.strengths.map((_, i) => rankingKey("success", i)), rankingKey("exploited", 0)];
    const worker = async () => {
      for (let k = keys.shift(); k !== undefined; k = keys.shift()) await rankingInfo(this.root, k).catch(() => undefined);
    };
    void Promise.all([worker(), worker()]);
  }

  private row(r: Row): HTMLTableRowElement {
    const tr = document.createElement("tr");
    tr.tabIndex = 0;
    tr.dataset.original = String(r.original);
    tr.dataset.target = String(r.target);
    tr.dataset.value = String(r.value);
    const cells: [string, string][] = [
      [this.name(r.original), "name"],
      [this.name(r.target), "name"],
      ["", "num success"],
      ["", "num exploited"],
    ];
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      td.className = cls;
      if (cls === "name") td.title = text;
      tr.append(td);
    }
    const pair = loadedPartition(r.original)?.find((p) => p.target === r.target);
    this.fillRow(tr, r, pair);
    const go = () => {
      this.close();
      this.onOpen(r.original, r.target);
    };
    tr.addEventListener("click", go);
    tr.addEventListener("keydown", (e) => {
      if (e.key === "Enter") go();
    });
    return tr;
  }

  /** Write the success and exploited cells from the row's value and, once read, its pair_index row. */
  private fillRow(tr: HTMLTableRowElement, r: Row, p: PairRow | undefined): void {
    const rate = p ? (p.successRate[this.sIndex] ?? NaN) : this.by === "success" ? r.value : NaN;
    const succ = tr.children[2] as HTMLElement;
    succ.textContent = "";
    const bar = document.createElement("span");
    bar.className = "rate-bar";
    bar.style.width = `${Number.isFinite(rate) ? Math.round(rate * 60) : 0}px`;
    const txt = Number.isFinite(rate)
      ? `${r.approx && !p ? "≈" : ""}${(rate * 100).toFixed(0)}%${p ? ` (${p.nSuccess[this.sIndex]}/${p.nImages})` : ""}`
      : p || this.by === "success"
        ? "—"
        : "…";
    succ.append(bar, document.createTextNode(txt));
    const ex = p ? p.nExploited : this.by === "exploited" ? r.value : NaN;
    (tr.children[3] as HTMLElement).textContent = Number.isFinite(ex) ? String(ex) : "…";
    tr.dataset.filled = p ? "1" : "0";
  }

  /** Read the partitions of the originals on the page (a few at a time) and fill their rows. */
  private async fill(tok: number, rows: Row[], trs: HTMLTableRowElement[]): Promise<void> {
    const todo = [...new Set(rows.map((r) => r.original))].filter((o) => !loadedPartition(o));
    const worker = async () => {
      for (let o = todo.shift(); o !== undefined; o = todo.shift()) {
        if (tok !== this.token) return;
        let pairs: PairRow[];
        try {
          pairs = await loadPartition(this.root, o);
        } catch (e) {
          console.warn(`pair explorer: ${(e as Error).message}`);
          continue;
        }
        if (tok !== this.token) return;
        rows.forEach((r, i) => {
          if (r.original === o) this.fillRow(trs[i], r, pairs.find((p) => p.target === r.target));
        });
      }
    };
    await Promise.all(Array.from({ length: FILL_CONCURRENCY }, worker));
  }
}
