// A searchable class picker (the header's [ORIGINAL ▾] and [TARGET ▾], the explorer's filters): a
// button that opens a filter box and a list. Keyboard: Enter/↓ open, type to filter, ↑↓ move, Enter
// picks, Esc closes. Names are data: they are only ever set with textContent.
//
// Fast with 1000 classes: each option's search text (name, wnid, id) is lower-cased once, a
// keystroke filters that array, and only the first MAX_SHOWN matches get list items (a last line
// says how many more match).

export interface PickerOption {
  value: number;
  label: string;
  /** shown muted after the label, and searched (e.g. the wnid) */
  detail?: string;
  disabled?: boolean;
  note?: string;
}

interface Indexed extends PickerOption {
  hay: string;
}

export const MAX_SHOWN = 60;

export class Picker {
  private button: HTMLButtonElement;
  private pop: HTMLDivElement;
  private input: HTMLInputElement;
  private list: HTMLUListElement;
  private options: Indexed[] = [];
  private matches: Indexed[] = [];
  private active = 0;
  value: number | null = null;

  constructor(
    private host: HTMLElement,
    private placeholder: string,
    private onPick: (value: number) => void,
    label = placeholder,
  ) {
    host.textContent = "";
    this.button = document.createElement("button");
    this.button.type = "button";
    this.button.className = "picker-button";
    this.button.setAttribute("aria-haspopup", "listbox");
    this.button.setAttribute("aria-expanded", "false");
    this.pop = document.createElement("div");
    this.pop.className = "picker-pop";
    this.pop.hidden = true;
    this.input = document.createElement("input");
    this.input.type = "search";
    this.input.placeholder = "Search name or wnid…";
    this.input.setAttribute("aria-label", `Search ${label}`);
    this.list = document.createElement("ul");
    this.list.setAttribute("role", "listbox");
    this.pop.append(this.input, this.list);
    host.append(this.button, this.pop);
    this.render();

    this.button.addEventListener("click", () => (this.pop.hidden ? this.open() : this.close()));
    this.button.addEventListener("keydown", (e) => {
      if (e.key === "ArrowDown") {
        e.preventDefault();
        this.open();
      }
    });
    this.input.addEventListener("input", () => {
      this.active = 0;
      this.filter();
      this.renderList();
    });
    this.input.addEventListener("keydown", (e) => {
      const shown = Math.min(this.matches.length, MAX_SHOWN);
      if (e.key === "ArrowDown") {
        e.preventDefault();
        this.active = Math.min(shown - 1, this.active + 1);
        this.renderList();
      } else if (e.key === "ArrowUp") {
        e.preventDefault();
        this.active = Math.max(0, this.active - 1);
        this.renderList();
      } else if (e.key === "Enter") {
        e.preventDefault();
        const o = this.matches[this.active];
        if (o && !o.disabled) this.pick(o.value);
      } else if (e.key === "Escape") {
        e.preventDefault();
        e.stopPropagation();
        this.close();
        this.button.focus();
      }
    });
    document.addEventListener("mousedown", (e) => {
      if (!this.pop.hidden && !host.contains(e.target as Node)) this.close();
    });
  }

  setOptions(options: PickerOption[], value: number | null): void {
    this.options = options.map((o) => ({ ...o, hay: `${o.label}\u0000${o.detail ?? ""}`.toLowerCase() }));
    this.host.dataset.options = String(options.length);
    this.value = value;
    this.render();
    if (!this.pop.hidden) {
      this.filter();
      this.renderList();
    }
  }

  setValue(value: number | null): void {
    this.value = value;
    this.render();
  }

  get isOpen(): boolean {
    return !this.pop.hidden;
  }

  open(): void {
    this.pop.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    this.input.value = "";
    this.filter();
    const i = this.matches.findIndex((o) => o.value === this.value);
    this.active = i >= 0 && i < MAX_SHOWN ? i : 0;
    this.renderList();
    this.input.focus();
  }

  close(): void {
    this.pop.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
  }

  private pick(v: number): void {
    this.close();
    this.value = v;
    this.render();
    this.button.focus();
    this.onPick(v);
  }

  private filter(): void {
    const q = this.input.value.trim().toLowerCase();
    if (!q) {
      this.matches = this.options;
      return;
    }
    const out: Indexed[] = [];
    for (const o of this.options) if (o.hay.includes(q) || String(o.value) === q) out.push(o);
    this.matches = out;
  }

  private render(): void {
    const o = this.options.find((x) => x.value === this.value);
    this.button.textContent = `${o ? o.label : this.placeholder} ▾`;
    this.button.title = o ? `${o.label}${o.detail ? ` (${o.detail})` : ""}` : "";
    this.button.classList.toggle("empty", !o);
    this.host.dataset.value = o ? String(o.value) : "";
  }

  private renderList(): void {
    this.list.textContent = "";
    const items = this.matches;
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = "no matching class";
      this.list.append(li);
      return;
    }
    const shown = items.slice(0, MAX_SHOWN);
    shown.forEach((o, i) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      li.dataset.value = String(o.value);
      const name = document.createElement("span");
      name.className = "opt-label";
      name.textContent = o.label;
      li.append(name);
      if (o.detail && o.detail !== o.label) {
        const d = document.createElement("span");
        d.className = "detail";
        d.textContent = o.detail;
        li.append(d);
      }
      if (o.note) {
        const s = document.createElement("span");
        s.className = "note";
        s.textContent = o.note;
        li.append(s);
      }
      if (o.disabled) li.setAttribute("aria-disabled", "true");
      if (i === this.active) li.classList.add("active");
      if (o.value === this.value) li.setAttribute("aria-selected", "true");
      li.addEventListener("mousedown", (e) => e.preventDefault());
      li.addEventListener("click", () => {
        if (!o.disabled) this.pick(o.value);
      });
      this.list.append(li);
    });
    if (items.length > MAX_SHOWN) {
      const li = document.createElement("li");
      li.className = "more";
      li.textContent = `${items.length - MAX_SHOWN} more match${items.length - MAX_SHOWN === 1 ? "" : "es"}: keep typing`;
      this.list.append(li);
    }
    const act = this.list.querySelector("li.active");
    if (act && "scrollIntoView" in act) (act as HTMLElement).scrollIntoView({ block: "nearest" });
  }
}

/** Fill a strength <select> with one option per strength (value = 0-based index, label = eps). */
export function fillStrengths(sel: HTMLSelectElement, strengths: number[], selected: number): void {
  sel.textContent = "";
  strengths.forEach((e, i) => {
    const o = document.createElement("option");
    o.value = String(i);
    o.textContent = e.toFixed(2);
    sel.append(o);
  });
  sel.value = String(selected);
}
