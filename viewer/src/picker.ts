// A searchable class picker (the header's [ORIGINAL ▾] and [TARGET ▾]): a button that opens a
// filter box and a list. Keyboard: Enter/↓ open, type to filter, ↑↓ move, Enter picks, Esc closes.
// Names are data: they are only ever set with textContent.

export interface PickerOption {
  value: number;
  label: string;
  disabled?: boolean;
  note?: string;
}

export class Picker {
  private button: HTMLButtonElement;
  private pop: HTMLDivElement;
  private input: HTMLInputElement;
  private list: HTMLUListElement;
  private options: PickerOption[] = [];
  private active = 0;
  value: number | null = null;

  constructor(
    host: HTMLElement,
    private placeholder: string,
    private onPick: (value: number) => void,
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
    this.input.placeholder = "Search classes…";
    this.input.setAttribute("aria-label", `Search ${placeholder}`);
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
      this.renderList();
    });
    this.input.addEventListener("keydown", (e) => {
      const items = this.visible();
      if (e.key === "ArrowDown") {
        e.preventDefault();
        this.active = Math.min(items.length - 1, this.active + 1);
        this.renderList();
      } else if (e.key === "ArrowUp") {
        e.preventDefault();
        this.active = Math.max(0, this.active - 1);
        this.renderList();
      } else if (e.key === "Enter") {
        e.preventDefault();
        const o = items[this.active];
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
    this.options = options;
    this.value = value;
    this.render();
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
    this.active = Math.max(0, this.visible().findIndex((o) => o.value === this.value));
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

  private visible(): PickerOption[] {
    const q = this.input.value.trim().toLowerCase();
    return q ? this.options.filter((o) => o.label.toLowerCase().includes(q) || String(o.value) === q) : this.options;
  }

  private render(): void {
    const o = this.options.find((x) => x.value === this.value);
    this.button.textContent = `${o ? o.label : this.placeholder} ▾`;
    this.button.classList.toggle("empty", !o);
  }

  private renderList(): void {
    this.list.textContent = "";
    const items = this.visible();
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "none";
      li.textContent = "no matching class";
      this.list.append(li);
      return;
    }
    items.forEach((o, i) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      li.dataset.value = String(o.value);
      li.textContent = o.label;
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
    const act = this.list.querySelector("li.active");
    if (act && "scrollIntoView" in act) (act as HTMLElement).scrollIntoView({ block: "nearest" });
  }
}
