"""Helpers for the viewer tests: waiting for the graph, screenshots, and the highlight rule
implemented independently of viewer/src/highlight.ts (the tests' expected values)."""

from __future__ import annotations

import math
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ROLE_ORDER = {"original": 0, "both": 1, "target": 2, "exploited": 3}


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"viewer-{name}.png"))


def wait_ready(page, pair: str | None = None) -> None:
    """Wait until the graph shows ``pair`` ("o-t") or, without one, any pair or an error."""
    if pair:
        page.wait_for_selector(f"svg#graph[data-pair='{pair}'][data-state='ready']")
    else:
        page.wait_for_function("window.__bluff && window.__bluff.state !== 'loading'")


# --- the highlight rule, implemented independently of viewer/src/highlight.ts -------------------


def _act(n: dict, s: int) -> float:
    v = n["importance_original"] if s == 0 else n["importance_attacked"][s - 1]
    return math.nan if v is None else float(v)


def _inf(e: dict, s: int) -> float:
    v = e["influence_original"] if s == 0 else e[f"influence_attacked_{s - 1}"]  # FORMAT.md edges, schema 3
    return math.nan if v is None else float(v)


def _conditions(e: dict) -> list:
    """An edge row's influences: original, target, then every strength."""
    return [e["influence_original"], e["influence_target"]] + [
        e[k]
        for k in sorted((k for k in e if k.startswith("influence_attacked_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    ]


def _score(value_at, item, s: int, criterion: str) -> float:
    a = value_at(item, s)
    if math.isnan(a):
        return math.nan
    if criterion == "activated":
        return a
    if s == 0:
        return math.nan
    d = a - value_at(item, 0)
    return {"excited": d, "inhibited": -d, "changed": abs(d)}[criterion]


def node_id(n: dict) -> str:
    return f"{n['layer']}-{n['channel']}"


def expected_highlight(nodes: list[dict], s: int, criterion: str, pct: int) -> set[str]:
    out: set[str] = set()
    for layer in {n["layer"] for n in nodes}:
        row = [n for n in nodes if n["layer"] == layer]
        take = (len(row) * pct) // 100
        scored = [(n, _score(_act, n, s, criterion)) for n in row]
        scored = [x for x in scored if not math.isnan(x[1])]
        scored.sort(key=lambda x: (-x[1], ROLE_ORDER[x[0]["role"]], x[0]["channel"]))
        out |= {node_id(n) for n, _ in scored[:take]}
    return out


def expected_edges(edges: list[dict], hl: set[str], s: int, criterion: str, pct: int) -> list[dict]:
    groups: dict[str, list] = {}
    for e in edges:
        src, dst = f"{e['src_layer']}-{e['src_channel']}", f"{e['dst_layer']}-{e['dst_channel']}"
        if src not in hl or dst not in hl or not _inf(e, s) > 0:
            continue
        v = _score(_inf, e, s, criterion)
        if math.isnan(v):
            continue
        groups.setdefault(e["src_layer"], []).append((v, src, dst, e))
    out = []
    for items in groups.values():
        take = math.floor(len(items) * pct / 100 + 0.5)  # JavaScript Math.round
        items.sort(key=lambda x: (-x[0], x[1], x[2]))
        out += [x[3] for x in items[:take]]
    return out


def expected_width(e: dict, edges: list[dict], s: int) -> float:
    """0.5..4 px: 4 * influence / (largest influence of the layer pair over every condition)."""
    vals = [
        float(v)
        for x in edges
        if x["src_layer"] == e["src_layer"]
        for v in _conditions(x)
        if v is not None and not math.isnan(v)
    ]
    mx = max(vals)
    return max(0.5, 4 * _inf(e, s) / mx)
