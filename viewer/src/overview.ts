// The class-by-class overview: a heatmap of attack success at one strength, original classes as
// rows, target classes as columns, from overview/success.parquet (one row group per strength, one
// byte per cell: round(254 x rate), 255 = not computed).
//
// Drawn on a canvas: the n x n bytes become an ImageData through a 256-entry colour table (one
// pixel per cell), kept in an offscreen canvas, and drawn with the view's scale and offset
// (nearest-neighbour when a cell is at least one screen pixel, smoothed when zoomed out further).
// Wheel zooms around the pointer, drag pans, `0` or "Fit" resets, "1:1" shows one pixel per cell;
// hovering shows the two classes and the rate, a click opens the pair.
//
// Colour ramp (documented in the README; a test recomputes it): byte b in 0..254 maps to
// t = b / 254 and each sRGB channel to Math.round(low + (high - low) * t) with low = RAMP_LOW and
// high = RAMP_HIGH (linear interpolation of the sRGB components, as d3.interpolateRgb does);
// 255 (not computed) is NOT_COMPUTED.
import type { ClassInfo } from "./data";
import { DataError, OVERVIEW_MISSING, OVERVIEW_SCALE, loadOverview } from "./data";
import type { Overview } from "./data";
import { fillStrengths } from "./picker";

export const RAMP_LOW: [number, number, number] = [255, 247, 236]; // #fff7ec: no attack succeeded
export const RAMP_HIGH: [number, number, number] = [127, 0, 0]; // #7f0000: every attack succeeded
export const NOT_COMPUTED: [number, number, number] = [189, 189, 189]; // #bdbdbd

/** The colour of an overview byte (0..254: success round(254 x rate); 255: not computed). */
export function cellColor(b: number): [number, number, number] {
  if (b === OVERVIEW_MISSING) return NOT_COMPUTED;
  const t = b / OVERVIEW_SCALE;
  return [0, 1, 2].map((i) => Math.round(RAMP_LOW[i] + (RAMP_HIGH[i] - RAMP_LOW[i]) * t)) as [number, number, number];
}

/** ABGR words (little-endian RGBA bytes) for every byte value. */
const LUT = (() => {
  const lut = new Uint32Array(256);
  for (let b = 0; b < 256; b++) {
    const [r, g, bl] = cellColor(b);
    lut[b] = (255 << 24) | (bl << 16) | (g << 8) | r;
  }
  return lut;
})();

const MAX_SCALE = 48;

export class ClassOverview {
  private canvas: HTMLCanvasElement;
  private stage: HTMLElement;
  private tip: HTMLElement;
  private base: HTMLCanvasElement | null = null;
  private data: Overview | null = null;
  private scale = 1;
  private tx = 0;
  private ty = 0;
  private fit = 1;
  private token = 0;
  private root = "";
  private classes: ClassInfo[] = [];
  private strengths: number[] = [];
  sIndex = 0;
  /** ms from the request to the drawn heatmap (the last draw) */
  lastMs = NaN;

  constructor(
    private dialog: HTMLElement,
    private onOpen: (original: number, target: number) => void,
    private onStrength: (sIndex: number) => void,
  ) {
    this.canvas = dialog.querySelector("#overview-canvas")!;
    this.stage = dialog.querySelector(".overview-stage")!;
    this.tip = dialog.querySelector("#overview-tip")!;
    dialog.querySelector("#close-overview")!.addEventListener("click", () => this.close());
    dialog.querySelector("#overview-fit")!.addEventListener("click", () => this.resetView());
    dialog.querySelector("#overview-one")!.addEventListener("click", () => this.oneToOne());
    dialog.querySelector<HTMLSelectElement>("#overview-strength")!.addEventListener("change", (e) => {
      this.sIndex = Number((e.target as HTMLSelectElement).value);
      this.onStrength(this.sIndex);
      void this.load();
    });
    dialog.addEventListener("click", (e) => {
      if (e.target === dialog) this.close();
    });
    dialog.addEventListener("keydown", (e) => {
      const t = e.target as HTMLElement;
      if (t instanceof HTMLSelectElement) return;
      if (e.key === "0") this.resetView();
      else if (e.key === "+" || e.key === "=") this.zoomAt(this.stage.clientWidth / 2, this.stage.clientHeight / 2, 1.5);
      else if (e.key === "-") this.zoomAt(this.stage.clientWidth / 2, this.stage.clientHeight / 2, 1 / 1.5);
      else if (e.key.startsWith("Arrow")) {
        const step = 40;
        this.tx += e.key === "ArrowLeft" ? step : e.key === "ArrowRight" ? -step : 0;
        this.ty += e.key === "ArrowUp" ? step : e.key === "ArrowDown" ? -step : 0;
        this.draw();
      } else return;
      e.preventDefault();
    });
    this.canvas.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const r = this.canvas.getBoundingClientRect();
        this.zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-e.deltaY * 0.0015));
      },
      { passive: false },
    );
    let drag: { x: number; y: number; tx: number; ty: number; moved: boolean } | null = null;
    this.canvas.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, tx: this.tx, ty: this.ty, moved: false };
      this.canvas.setPointerCapture(e.pointerId);
    });
    this.canvas.addEventListener("pointermove", (e) => {
      if (drag) {
        const dx = e.clientX - drag.x;
        const dy = e.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
        if (drag.moved) {
          this.tx = drag.tx + dx;
          this.ty = drag.ty + dy;
          this.draw();
          this.tip.hidden = true;
          return;
        }
      }
      this.hover(e);
    });
    this.canvas.addEventListener("pointerup", (e) => {
      const d = drag;
      drag = null;
      if (d && !d.moved) {
        const c = this.cellAt(e);
        if (c && c.b !== OVERVIEW_MISSING) {
          this.close();
          this.onOpen(c.o, c.t);
        }
      }
    });
    this.canvas.addEventListener("pointerleave", () => (this.tip.hidden = true));
    window.addEventListener("resize", () => {
      if (this.isOpen && this.data) {
        this.sizeCanvas();
        this.draw();
      }
    });
  }

  setData(root: string, classes: ClassInfo[], strengths: number[]): void {
    this.root = root;
    this.classes = classes;
    this.strengths = strengths;
    const sel = this.dialog.querySelector<HTMLSelectElement>("#overview-strength")!;
    fillStrengths(sel, strengths, 0);
    this.drawLegend();
  }

  get isOpen(): boolean {
    return !this.dialog.hidden;
  }

  /** Open at strength index sIndex (0-based into strengths). */
  open(sIndex: number): void {
    this.dialog.hidden = false;
    this.setStrength(sIndex, true);
    this.canvas.focus();
  }

  setStrength(sIndex: number, force = false): void {
    if (sIndex === this.sIndex && !force && this.data) return;
    this.sIndex = sIndex;
    this.dialog.querySelector<HTMLSelectElement>("#overview-strength")!.value = String(sIndex);
    if (this.isOpen) void this.load();
  }

  close(): void {
    this.dialog.hidden = true;
    this.tip.hidden = true;
  }

  private async load(): Promise<void> {
    const tok = ++this.token;
    const t0 = performance.now();
    const d = this.dialog;
    d.dataset.state = "loading";
    const msg = d.querySelector<HTMLElement>("#overview-msg")!;
    msg.hidden = true;
    let ov: Overview;
    try {
      ov = await loadOverview(this.root, this.classes.length, this.sIndex);
    } catch (e) {
      if (tok !== this.token) return;
      msg.textContent = e instanceof DataError ? `${e.file}: ${e.message}` : (e as Error).message;
      msg.hidden = false;
      d.dataset.state = "error";
      return;
    }
    if (tok !== this.token) return;
    const first = !this.data || this.data.n !== ov.n;
    this.data = ov;
    const n = ov.n;
    const base = this.base && this.base.width === n ? this.base : document.createElement("canvas");
    base.width = n;
    base.height = n;
    const img = new ImageData(n, n);
    const px = new Uint32Array(img.data.buffer);
    const cells = ov.cells;
    for (let i = 0; i < cells.length; i++) px[i] = LUT[cells[i]];
    base.getContext("2d")!.putImageData(img, 0, 0);
    this.base = base;
    this.sizeCanvas();
    if (first) this.resetView(false);
    this.draw();
    this.lastMs = performance.now() - t0;
    d.dataset.ms = String(Math.round(this.lastMs));
    d.dataset.n = String(n);
    d.dataset.strength = String(this.sIndex);
    d.dataset.state = "ready";
  }

  private sizeCanvas(): void {
    const dpr = window.devicePixelRatio || 1;
    const w = this.stage.clientWidth;
    const h = this.stage.clientHeight;
    this.canvas.style.width = `${w}px`;
    this.canvas.style.height = `${h}px`;
    this.canvas.width = Math.round(w * dpr);
    this.canvas.height = Math.round(h * dpr);
  }

  /** Fit: the whole matrix, with an integer number of pixels per cell when it fits at all. */
  resetView(redraw = true): void {
    if (!this.data) return;
    const n = this.data.n;
    const w = this.stage.clientWidth;
    const h = this.stage.clientHeight;
    const f = Math.min(w, h) / n;
    this.fit = f >= 1 ? Math.min(MAX_SCALE, Math.floor(f)) : f;
    this.scale = this.fit;
    this.tx = Math.floor((w - n * this.scale) / 2);
    this.ty = Math.floor((h - n * this.scale) / 2);
    if (redraw) this.draw();
  }

  /** One screen pixel per cell, keeping the cell under the view's centre in place. */
  oneToOne(): void {
    if (!this.data) return;
    const cx = this.stage.clientWidth / 2;
    const cy = this.stage.clientHeight / 2;
    this.tx = Math.round(cx - (cx - this.tx) / this.scale);
    this.ty = Math.round(cy - (cy - this.ty) / this.scale);
    this.scale = 1;
    this.draw();
  }

  private zoomAt(x: number, y: number, factor: number): void {
    if (!this.data) return;
    const s = Math.max(Math.min(this.fit, 1), Math.min(MAX_SCALE, this.scale * factor));
    this.tx = x - ((x - this.tx) * s) / this.scale;
    this.ty = y - ((y - this.ty) * s) / this.scale;
    this.scale = s;
    this.draw();
  }

  private draw(): void {
    const ctx = this.canvas.getContext("2d");
    if (!ctx || !this.base) return;
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.imageSmoothingEnabled = this.scale < 1;
    ctx.setTransform(dpr * this.scale, 0, 0, dpr * this.scale, dpr * this.tx, dpr * this.ty);
    ctx.drawImage(this.base, 0, 0);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    const c = this.canvas.dataset;
    c.scale = String(this.scale);
    c.tx = String(this.tx);
    c.ty = String(this.ty);
  }

  private cellAt(e: MouseEvent): { o: number; t: number; b: number } | null {
    if (!this.data) return null;
    const r = this.canvas.getBoundingClientRect();
    const t = Math.floor((e.clientX - r.left - this.tx) / this.scale);
    const o = Math.floor((e.clientY - r.top - this.ty) / this.scale);
    const n = this.data.n;
    if (o < 0 || t < 0 || o >= n || t >= n) return null;
    return { o, t, b: this.data.cells[o * n + t] };
  }

  private hover(e: MouseEvent): void {
    const c = this.cellAt(e);
    if (!c) {
      this.tip.hidden = true;
      this.canvas.style.cursor = "grab";
      return;
    }
    const name = (i: number) => this.classes[i]?.name ?? `class ${i}`;
    const eps = this.strengths[this.sIndex]?.toFixed(2);
    this.tip.textContent = "";
    const head = document.createElement("div");
    head.className = "tip-pair";
    head.textContent = `${name(c.o)} → ${name(c.t)}`;
    const body = document.createElement("div");
    body.className = "tip-rate";
    body.textContent =
      c.b === OVERVIEW_MISSING
        ? c.o === c.t
          ? "same class"
          : "not computed"
        : `${((100 * c.b) / OVERVIEW_SCALE).toFixed(1)}% of attacks succeed at eps ${eps}`;
    this.tip.append(head, body);
    this.tip.dataset.original = String(c.o);
    this.tip.dataset.target = String(c.t);
    this.tip.hidden = false;
    const r = this.stage.getBoundingClientRect();
    const x = e.clientX - r.left + 14;
    const y = e.clientY - r.top + 14;
    this.tip.style.left = `${Math.min(x, r.width - this.tip.offsetWidth - 4)}px`;
    this.tip.style.top = `${Math.min(y, r.height - this.tip.offsetHeight - 4)}px`;
    this.canvas.style.cursor = c.b === OVERVIEW_MISSING ? "grab" : "pointer";
  }

  private drawLegend(): void {
    const c = this.dialog.querySelector<HTMLCanvasElement>("#overview-ramp")!;
    c.width = 255;
    c.height = 1;
    const img = new ImageData(255, 1);
    const px = new Uint32Array(img.data.buffer);
    for (let b = 0; b <= 254; b++) px[b] = LUT[b];
    c.getContext("2d")!.putImageData(img, 0, 0);
    const nc = this.dialog.querySelector<HTMLElement>("#overview-nc")!;
    nc.style.background = `rgb(${NOT_COMPUTED.join(",")})`;
  }
}
