// The neuron atlas (header button or `a`): every neuron of the model from atlas/neurons.parquet
// (one row per neuron, aggregated over all computed pairs by the reduce), and a per-class view of
// how easy each class is to attack and to reach (classes.parquet success_as_original /
// success_as_target). Nothing here grows with the number of pairs: the atlas file has one row per
// neuron (about 5,500 for GoogLeNet), the class statistics one row per class, and the feature
// visualisation thumbnails come from neurons/index.parquet (the file the hover detail reads) after
// the rows are shown, as lazy images.
//
// - Neurons: searchable by neuron id (`mixed4d-123`; an exact id comes first) and by the name of a
//   class among its top originals/targets; sortable by pairs exploiting it at any strength, at the
//   chosen strength (n_exploited[i]), by its measured effect alone (mean_recovery, with its mean null
//   percentile; the default order) and by pairs displaying it; descending, then atlas row order
//   (layer, channel); ascending is the finite
//   part reversed; NaN last. PAGE_ROWS rows per page (never more in the DOM).
// - A row (click or Enter) opens the neuron's detail: its pictures, counts and effect per strength,
//   its top classes as links that open the pair explorer filtered to that class, and its top pair.
// - Classes: every class, sortable by success as original or as target at the strength; the two
//   cells open the pair explorer filtered to pairs from / into that class.
// Names are data: they are only ever set with textContent.
import type { AtlasNeuron, ClassInfo, ClassStats, Manifest, NeuronAssets } from "./data";
import { DataError, findPair, loadAssets, loadAtlas, loadClassStats, traffic } from "./data";
import { verdict as verdictOf } from "./causal";
import { fillStrengths } from "./picker";

export const ATLAS_PAGE_ROWS = 50;
export type NeuronSort = "any" | "at" | "effect" | "displayed";
export type ClassSort = "original" | "target";

export interface AtlasHandlers {
  /** open the pair explorer filtered to an original and/or a target, at strength index sIndex (0-based) */
  explore: (original: number | null, target: number | null, sIndex: number) => void;
  openPair: (original: number, target: number) => void;
}

interface Item<T> {
  x: T;
  v: number;
  tie: number;
}

/** Descending by v then tie ascending; ascending = the finite part reversed; NaN last (tie order). */
export function sortItems<T>(items: Item<T>[], desc: boolean): Item<T>[] {
  const valid = items.filter((i) => Number.isFinite(i.v));
  const nan = items.filter((i) => !Number.isFinite(i.v));
  valid.sort((a, b) => b.v - a.v || a.tie - b.tie);
  nan.sort((a, b) => a.tie - b.tie);
  if (!desc) valid.reverse();
  return [...valid, ...nan];
}

const pct = (v: number) => (Number.isFinite(v) ? `${Math.round(100 * v)}%` : "—");

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls?: string, text?: string): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Pager buttons « ‹ › » and a range text, inside `foot`. */
class Pager {
  page = 0;
  total = 0;
  private range: HTMLElement;
  private buttons: HTMLButtonElement[];

  constructor(
    foot: HTMLElement,
    prefix: string,
    private what: string,
    private onChange: () => void,
  ) {
    this.range = foot.querySelector(`#${prefix}-range`)!;
    const ids = ["first", "prev", "next", "last"];
    this.buttons = ids.map((id) => foot.querySelector<HTMLButtonElement>(`#${prefix}-${id}`)!);
    const to = [() => 0, () => this.page - 1, () => this.page + 1, () => this.last()];
    this.buttons.forEach((b, i) => b.addEventListener("click", () => this.go(to[i]())));
  }

  last(): number {
    return Math.max(0, Math.ceil(this.total / ATLAS_PAGE_ROWS) - 1);
  }

  go(p: number): void {
    const q = Math.max(0, Math.min(this.last(), p));
    if (q !== this.page) {
      this.page = q;
      this.onChange();
    }
  }

  /** Clamp the page to `total` rows and return [a, b) of the page. */
  update(total: number): [number, number] {
    this.total = total;
    this.page = Math.min(this.page, this.last());
    const a = this.page * ATLAS_PAGE_ROWS;
    const b = Math.min(total, a + ATLAS_PAGE_ROWS);
    this.range.textContent = total ? `${(a + 1).toLocaleString("en")}–${b.toLocaleString("en")} of ${total.toLocaleString("en")} ${this.what}` : `no ${this.what}`;
    this.buttons.forEach((btn, i) => (btn.disabled = i < 2 ? this.page === 0 : this.page >= this.last()));
    return [a, b];
  }
}

export class NeuronAtlas {
  sIndex = 0;
  by: NeuronSort = "effect";
  desc = true;
  classBy: ClassSort = "original";
  classDesc = true;
  tab: "neurons" | "classes" = "neurons";
  private root = "";
  private manifest: Manifest | null = null;
  private classes: ClassInfo[] = [];
  private neurons: AtlasNeuron[] | null = null;
  private hay: string[] = [];
  private stats: ClassStats | null = null;
  private assets: Map<string, NeuronAssets> | null = null;
  private assetsFailed = false;
  private token = 0;
  private selected: AtlasNeuron | null = null;
  private neuronPager: Pager;
  private classPager: Pager;
  private search: HTMLInputElement;
  private classSearch: HTMLInputElement;
  private msg: HTMLElement;
  private detail: HTMLElement;

  constructor(
    private dialog: HTMLElement,
    private handlers: AtlasHandlers,
  ) {
    const q = <T extends HTMLElement>(s: string) => dialog.querySelector<T>(s)!;
    this.msg = q("#atlas-msg");
    this.detail = q("#atlas-detail");
    this.search = q<HTMLInputElement>("#atlas-search");
    this.classSearch = q<HTMLInputElement>("#atlas-class-search");
    this.neuronPager = new Pager(q("#atlas-neurons .explorer-foot"), "atlas", "neurons", () => this.renderNeurons());
    this.classPager = new Pager(q("#atlas-classes .explorer-foot"), "atlas-class", "classes", () => void this.renderClasses());
    this.search.addEventListener("input", () => {
      this.neuronPager.page = 0;
      this.renderNeurons();
    });
    this.classSearch.addEventListener("input", () => {
      this.classPager.page = 0;
      void this.renderClasses();
    });
    q<HTMLSelectElement>("#atlas-strength").addEventListener("change", (e) => {
      this.sIndex = Number((e.target as HTMLSelectElement).value);
      this.refresh();
    });
    const sortable = (sel: string, apply: (key: string) => void) =>
      dialog.querySelectorAll<HTMLTableCellElement>(sel).forEach((th) => {
        const go = () => apply(th.dataset.key!);
        th.addEventListener("click", go);
        th.addEventListener("keydown", (e) => {
          if (e.key === "Enter" || e.key === " ") {
            e.preventDefault();
            go();
          }
        });
      });
    sortable("#atlas-table th[data-key]", (k) => {
      if (this.by === k) this.desc = !this.desc;
      else [this.by, this.desc] = [k as NeuronSort, true];
      this.neuronPager.page = 0;
      this.renderNeurons();
    });
    sortable("#atlas-class-table th[data-key]", (k) => {
      if (this.classBy === k) this.classDesc = !this.classDesc;
      else [this.classBy, this.classDesc] = [k as ClassSort, true];
      this.classPager.page = 0;
      void this.renderClasses();
    });
    for (const t of ["neurons", "classes"] as const) q(`#atlas-tab-${t}`).addEventListener("click", () => this.showTab(t));
    dialog.querySelector('[role="tablist"]')!.addEventListener("keydown", (e) => {
      const k = (e as KeyboardEvent).key;
      if (k === "ArrowLeft" || k === "ArrowRight") {
        e.preventDefault();
        this.showTab(this.tab === "neurons" ? "classes" : "neurons");
        q<HTMLElement>(`#atlas-tab-${this.tab}`).focus();
      }
    });
    dialog.addEventListener("keydown", (e) => {
      const t = e.target as HTMLElement;
      if (t instanceof HTMLSelectElement) return;
      if (e.key === "PageDown" || e.key === "PageUp") {
        e.preventDefault();
        const pg = this.tab === "neurons" ? this.neuronPager : this.classPager;
        pg.go(pg.page + (e.key === "PageDown" ? 1 : -1));
      }
    });
    q("#close-atlas").addEventListener("click", () => this.close());
    q("#atlas-detail-close").addEventListener("click", () => this.closeDetail());
    dialog.addEventListener("click", (e) => {
      if (e.target === dialog) this.close();
    });
  }

  setData(root: string, manifest: Manifest, classes: ClassInfo[]): void {
    this.root = root;
    this.manifest = manifest;
    this.classes = classes;
    this.sIndex = Math.min(this.sIndex, manifest.strengths.length - 1);
    fillStrengths(this.dialog.querySelector<HTMLSelectElement>("#atlas-strength")!, manifest.strengths, this.sIndex);
  }

  /** Follow the main strength slider (strength index s >= 1; 0 = benign keeps the last one). */
  setStrength(s: number): void {
    if (s >= 1 && s - 1 !== this.sIndex) {
      this.sIndex = s - 1;
      this.dialog.querySelector<HTMLSelectElement>("#atlas-strength")!.value = String(this.sIndex);
      if (this.isOpen) this.refresh();
    }
  }

  get isOpen(): boolean {
    return !this.dialog.hidden;
  }

  get detailOpen(): boolean {
    return !this.detail.hidden;
  }

  open(): void {
    this.dialog.hidden = false;
    this.assetsFailed = false;
    this.showTab(this.tab);
  }

  close(): void {
    this.dialog.hidden = true;
  }

  closeDetail(): void {
    const sel = this.selected;
    this.selected = null;
    this.detail.hidden = true;
    this.detail.dataset.id = "";
    if (sel) this.dialog.querySelector<HTMLElement>(`#atlas-table tr[data-id="${CSS.escape(sel.id)}"]`)?.focus();
  }

  private name(c: number): string {
    return this.classes[c]?.name ?? `class ${c}`;
  }

  private showTab(t: "neurons" | "classes"): void {
    this.tab = t;
    for (const k of ["neurons", "classes"] as const) {
      const on = k === t;
      this.dialog.querySelector(`#atlas-tab-${k}`)!.setAttribute("aria-selected", String(on));
      (this.dialog.querySelector(`#atlas-tab-${k}`) as HTMLElement).tabIndex = on ? 0 : -1;
      (this.dialog.querySelector(`#atlas-${k}`) as HTMLElement).hidden = !on;
    }
    this.dialog.dataset.tab = t;
    this.refresh();
    (t === "neurons" ? this.search : this.classSearch).focus();
  }

  private refresh(): void {
    if (!this.isOpen) return;
    if (this.tab === "neurons") void this.loadNeurons();
    else void this.renderClasses();
  }

  private showError(e: unknown): void {
    this.msg.textContent = e instanceof DataError ? `${e.file}: ${e.message}` : (e as Error).message;
    this.msg.hidden = false;
    this.dialog.dataset.state = "error";
  }

  // --- neurons ---------------------------------------------------------------------------------------

  private async loadNeurons(): Promise<void> {
    if (this.neurons) return this.renderNeurons();
    const tok = ++this.token;
    this.dialog.dataset.state = "loading";
    const t0 = performance.now();
    const b0 = traffic.bytes;
    let rows: AtlasNeuron[];
    try {
      rows = await loadAtlas(this.root, this.manifest!);
    } catch (e) {
      if (tok === this.token) this.showError(e);
      return;
    }
    this.dialog.dataset.loadMs = String(Math.round(performance.now() - t0));
    this.dialog.dataset.loadBytes = String(traffic.bytes - b0);
    this.neurons = rows;
    const names = (cs: number[]) => cs.map((c) => this.name(c)).join("\u0000");
    this.hay = rows.map((n) => `${n.id}\u0000${names(n.topOriginals)}\u0000${names(n.topTargets)}`.toLowerCase());
    if (tok === this.token || this.tab === "neurons") this.renderNeurons();
  }

  private value(n: AtlasNeuron): number {
    const i = this.sIndex;
    if (this.by === "any") return n.nExploitedAny;
    if (this.by === "at") return n.nExploited[i] ?? NaN;
    if (this.by === "effect") return n.meanRecovery;
    return n.nDisplayed;
  }

  /** The neurons matching the search, in the page's order. */
  matches(): AtlasNeuron[] {
    const all = this.neurons ?? [];
    const q = this.search.value.trim().toLowerCase();
    const hits = q ? all.filter((_, i) => this.hay[i].includes(q)) : all;
    const sorted = sortItems(
      hits.map((n) => ({ x: n, v: this.value(n), tie: n.row })),
      this.desc,
    ).map((i) => i.x);
    const exact = q ? sorted.findIndex((n) => n.id.toLowerCase() === q) : -1;
    if (exact > 0) sorted.unshift(...sorted.splice(exact, 1));
    return sorted;
  }

  private renderNeurons(): void {
    if (!this.neurons || this.tab !== "neurons") return;
    const t0 = performance.now();
    const d = this.dialog;
    this.msg.hidden = true;
    const eps = this.manifest!.strengths[this.sIndex].toFixed(2);
    d.querySelector("#atlas-at-head")!.textContent = `Pairs at eps ${eps}`;
    d.querySelector("#atlas-effect-head")!.textContent = "Effect alone (percentile)";
    d.querySelectorAll<HTMLTableCellElement>("#atlas-table th[data-key]").forEach((th) =>
      th.setAttribute("aria-sort", th.dataset.key === this.by ? (this.desc ? "descending" : "ascending") : "none"),
    );
    const rows = this.matches();
    const [a, b] = this.neuronPager.update(rows.length);
    const tbody = d.querySelector<HTMLTableSectionElement>("#atlas-table tbody")!;
    tbody.textContent = "";
    tbody.append(...rows.slice(a, b).map((n) => this.neuronRow(n)));
    d.querySelector("#atlas-count")!.textContent = this.search.value.trim()
      ? `${rows.length.toLocaleString("en")} of ${this.neurons.length.toLocaleString("en")} neurons match`
      : `${this.neurons.length.toLocaleString("en")} neurons`;
    d.dataset.total = String(rows.length);
    d.dataset.page = String(this.neuronPager.page);
    d.dataset.ms = String(Math.round(performance.now() - t0));
    d.dataset.state = "ready";
    if (this.selected) this.renderDetail(this.selected);
    void this.thumbs();
  }

  private classList(cs: number[], counts: number[], max: number): string {
    return cs
      .slice(0, max)
      .map((c, k) => `${this.name(c)} (${counts[k]})`)
      .join(", ");
  }

  private neuronRow(n: AtlasNeuron): HTMLTableRowElement {
    const i = this.sIndex;
    const tr = el("tr");
    tr.tabIndex = 0;
    tr.dataset.id = n.id;
    tr.dataset.any = String(n.nExploitedAny);
    tr.dataset.at = String(n.nExploited[i]);
    tr.dataset.effect = String(n.meanRecovery);
    tr.dataset.percentile = String(n.nullPercentile);
    tr.dataset.displayed = String(n.nDisplayed);
    const th = el("td", "thumb");
    th.append(el("span", "thumb-none", "·"));
    const cells: [string, string][] = [
      [n.id, "nid"],
      [String(n.nExploitedAny), "num any"],
      [String(n.nExploited[i]), "num at"],
      [n.nTested > 0 ? `${pct(n.meanRecovery)} (${Math.round(n.nullPercentile)})` : "—", "num effect"],
      [String(n.nDisplayed), "num displayed"],
      [this.classList(n.topOriginals, n.topOriginalCounts, 3), "classes originals"],
      [this.classList(n.topTargets, n.topTargetCounts, 3), "classes targets"],
    ];
    tr.append(th);
    for (const [text, cls] of cells) {
      const td = el("td", cls, text);
      if (cls.startsWith("classes")) td.title = text;
      tr.append(td);
    }
    tr.addEventListener("click", () => this.select(n));
    tr.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault(); // focus moves to the detail's close button: the key must not press it
        this.select(n);
      }
    });
    return tr;
  }

  /** Feature-vis thumbnails for the rows on the page, once neurons/index.parquet is read. */
  private async thumbs(): Promise<void> {
    if (!this.assets) {
      if (this.assetsFailed) return;
      try {
        this.assets = await loadAssets(this.root);
      } catch (e) {
        this.assetsFailed = true; // until the atlas is opened again
        console.warn("atlas thumbnails unavailable:", (e as Error).message);
        return;
      }
    }
    const a = this.assets;
    this.dialog.querySelectorAll<HTMLTableRowElement>("#atlas-table tbody tr").forEach((tr) => {
      const cell = tr.querySelector("td.thumb")!;
      const fv = a.get(tr.dataset.id!)?.featureVis;
      if (!fv || cell.querySelector("img")) return;
      const img = el("img", "thumb");
      img.loading = "lazy";
      img.alt = `feature visualisation of ${tr.dataset.id}`;
      img.width = 32;
      img.height = 32;
      img.src = fv;
      cell.textContent = "";
      cell.append(img);
    });
    if (this.selected) this.renderDetail(this.selected);
  }

  private select(n: AtlasNeuron): void {
    this.selected = n;
    this.renderDetail(n);
    this.detail.querySelector<HTMLElement>("#atlas-detail-close")!.focus();
  }

  private renderDetail(n: AtlasNeuron): void {
    const d = this.detail;
    const body = d.querySelector<HTMLElement>("#atlas-detail-body")!;
    body.textContent = "";
    d.hidden = false;
    d.dataset.id = n.id;
    const S = this.manifest!.strengths;
    const i = this.sIndex;
    body.append(el("h3", "atlas-detail-id", n.id));
    const e = `eps ${S[i].toFixed(2)}`;
    body.append(
      el(
        "p",
        "atlas-detail-summary",
        `Exploited in ${n.nExploitedAny} of the ${n.nDisplayed} pairs that display it (${n.nExploited[i]} at ${e}). ` +
          (n.nTested > 0
            ? `Patched alone in ${n.nTested} ${n.nTested === 1 ? "pair" : "pairs"}, it recovers ${pct(n.meanRecovery)} of the logit gap on average; ` +
              `its mean percentile among single random neurons of its layer is ${Math.round(n.nullPercentile)} (${verdictOf(n.nullPercentile)}).`
            : "Never tested alone against random neurons."),
      ),
    );
    // pictures
    const imgs = el("div", "atlas-detail-imgs");
    const a = this.assets?.get(n.id);
    const fig = el("figure");
    if (a?.featureVis) {
      const img = el("img", "atlas-fv");
      img.alt = `feature visualisation of ${n.id}`;
      img.src = a.featureVis;
      img.addEventListener("load", () => img.classList.toggle("pixelated", img.naturalWidth < 128));
      fig.append(img);
    } else fig.append(el("div", "no-img big", this.assets ? "none" : this.assetsFailed ? "unavailable" : "loading…"));
    fig.append(el("figcaption", undefined, "Feature visualisation"));
    const ex = el("figure");
    const grid = el("div", "atlas-patches");
    for (const src of a?.patches ?? []) {
      const img = el("img", "atlas-patch");
      img.alt = `dataset example for ${n.id}`;
      img.src = src;
      grid.append(img);
    }
    if (!grid.childElementCount) grid.append(el("div", "no-img big", this.assets ? "none" : "…"));
    ex.append(grid, el("figcaption", undefined, "Dataset examples"));
    imgs.append(fig, ex);
    body.append(imgs);
    // per strength
    const tbl = el("table", "atlas-per-strength");
    const head = el("tr");
    head.append(el("th", undefined, "eps"), el("th", "num", "pairs exploiting"), el("th", "num", "mean effect alone"));
    tbl.append(head);
    S.forEach((e, k) => {
      const tr = el("tr");
      if (k === i) tr.className = "current";
      tr.append(el("td", undefined, e.toFixed(2)), el("td", "num", String(n.nExploited[k])), el("td", "num", pct(n.meanEffect[k])));
      tbl.append(tr);
    });
    body.append(tbl);
    // classes: links that open the pair explorer filtered to the class
    const links = (title: string, cs: number[], counts: number[], role: "original" | "target") => {
      const box = el("div", `atlas-links ${role}`);
      box.append(el("div", "atlas-links-title", title));
      if (!cs.length) box.append(el("span", "hint", "none"));
      cs.forEach((c, k) => {
        const b = el("button", "class-link", `${this.name(c)} (${counts[k]})`);
        b.type = "button";
        b.dataset.class = String(c);
        b.dataset.role = role;
        b.title =
          role === "original"
            ? `Pair explorer: the pairs from ${this.name(c)}, by exploited neurons`
            : `Pair explorer: the pairs into ${this.name(c)}, by success`;
        b.addEventListener("click", () => (role === "original" ? this.handlers.explore(c, null, this.sIndex) : this.handlers.explore(null, c, this.sIndex)));
        box.append(b);
      });
      body.append(box);
    };
    links("Exploited most in pairs from (pairs)", n.topOriginals, n.topOriginalCounts, "original");
    links("and into (pairs)", n.topTargets, n.topTargetCounts, "target");
    const pairBox = el("div", "atlas-top-pair");
    body.append(pairBox);
    void this.topPair(n, pairBox);
  }

  /** "Open pair <top original> → <top target>" when that pair was computed (its partition says). */
  private async topPair(n: AtlasNeuron, box: HTMLElement): Promise<void> {
    const o = n.topOriginals[0];
    const t = n.topTargets.find((x) => x !== o);
    if (o === undefined || t === undefined) return;
    if (this.classes[o] && this.classes[o].nAsOriginal === 0) return;
    let found = false;
    try {
      found = !!(await findPair(this.root, o, t));
    } catch {
      return;
    }
    if (!found || this.selected !== n) return;
    const b = el("button", "header-button open-top-pair", `Open pair ${this.name(o)} → ${this.name(t)}`);
    b.type = "button";
    b.id = "atlas-open-pair";
    b.dataset.original = String(o);
    b.dataset.target = String(t);
    b.addEventListener("click", () => this.handlers.openPair(o, t));
    box.textContent = "";
    box.append(b);
  }

  // --- classes -----------------------------------------------------------------------------------------

  private async renderClasses(): Promise<void> {
    if (this.tab !== "classes") return;
    const d = this.dialog;
    const tok = ++this.token;
    if (!this.stats) {
      d.dataset.state = "loading";
      try {
        this.stats = await loadClassStats(this.root);
      } catch (e) {
        if (tok === this.token) this.showError(e);
        return;
      }
      if (tok !== this.token) return;
    }
    const t0 = performance.now();
    this.msg.hidden = true;
    const st = this.stats;
    const i = this.sIndex;
    const eps = this.manifest!.strengths[i].toFixed(2);
    d.querySelector("#atlas-class-orig-head")!.textContent = `Success as original at eps ${eps}`;
    d.querySelector("#atlas-class-target-head")!.textContent = `Success as target at eps ${eps}`;
    d.querySelectorAll<HTMLTableCellElement>("#atlas-class-table th[data-key]").forEach((th) =>
      th.setAttribute("aria-sort", th.dataset.key === this.classBy ? (this.classDesc ? "descending" : "ascending") : "none"),
    );
    const q = this.classSearch.value.trim().toLowerCase();
    const cls = q ? this.classes.filter((c) => c.name.toLowerCase().includes(q) || c.wnid.toLowerCase().includes(q)) : this.classes;
    const val = (c: number) => (this.classBy === "original" ? st.successAsOriginal[c]?.[i] : st.successAsTarget[c]?.[i]) ?? NaN;
    const rows = sortItems(
      cls.map((c) => ({ x: c.id, v: val(c.id), tie: c.id })),
      this.classDesc,
    ).map((x) => x.x);
    const [a, b] = this.classPager.update(rows.length);
    const tbody = d.querySelector<HTMLTableSectionElement>("#atlas-class-table tbody")!;
    tbody.textContent = "";
    for (const c of rows.slice(a, b)) {
      const tr = el("tr");
      tr.dataset.class = String(c);
      const so = st.successAsOriginal[c]?.[i] ?? NaN;
      const sT = st.successAsTarget[c]?.[i] ?? NaN;
      tr.dataset.original = String(so);
      tr.dataset.target = String(sT);
      const name = el("td", "name", this.name(c));
      name.title = `${this.name(c)} (${this.classes[c]?.wnid ?? c})`;
      tr.append(name);
      const cell = (v: number, n: number, role: "original" | "target") => {
        const td = el("td", `num ${role}`);
        const b = el("button", "rate-link");
        b.type = "button";
        b.disabled = !(n > 0);
        b.title = role === "original" ? `Pair explorer: the ${n} pairs from ${this.name(c)}` : `Pair explorer: the ${n} pairs into ${this.name(c)}`;
        const bar = el("span", "rate-bar");
        bar.style.width = `${Number.isFinite(v) ? Math.round(v * 60) : 0}px`;
        b.append(bar, document.createTextNode(`${pct(v)} (${n} pairs)`));
        b.addEventListener("click", () => (role === "original" ? this.handlers.explore(c, null, this.sIndex) : this.handlers.explore(null, c, this.sIndex)));
        td.append(b);
        return td;
      };
      tr.append(cell(so, st.nAsOriginal[c], "original"), cell(sT, st.nAsTarget[c], "target"));
      tbody.append(tr);
    }
    d.dataset.total = String(rows.length);
    d.dataset.page = String(this.classPager.page);
    d.dataset.ms = String(Math.round(performance.now() - t0));
    d.dataset.state = "ready";
  }
}
