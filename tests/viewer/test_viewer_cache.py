"""The viewer's Parquet byte caches stay within their budget while a person browses pairs.

Every file the viewer opens keeps its footer suffix and the ranges it read (data.ts ``openRangeFile``);
``fileCache.budget`` bounds their sum, closing the least recently used files. The test lowers the
budget below what four originals' files take, browses them, and checks the bytes held (counted by the
viewer) against the bytes the server sent (the traffic log), then returns to the first pair: its
files are fetched again and the graph is the same.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from viewer_helpers import node_id, wait_ready
from viewer_synth import read_pair

pytestmark = pytest.mark.browser

#: below the ~100 KB one original's nodes/edges/causal/causal_curve files take in the small root, x 4
BUDGET = 250_000


def pick(page, which: str, name: str) -> None:
    page.click(f"#pick-{which} .picker-button")
    page.fill(f"#pick-{which} input", name)
    page.locator(f"#pick-{which} ul").get_by_text(name, exact=True).click()


def open_pair(page, names: dict[int, str], o: int, t: int) -> None:
    pick(page, "original", names[o])
    page.wait_for_selector("#pick-target:not([data-options='0'])")
    pick(page, "target", names[t])
    wait_ready(page, f"{o}-{t}")
    page.wait_for_selector("#causal-panel[data-state='ready']")


def graph_dom(page) -> dict:
    return page.evaluate(
        """() => ({
        nodes: [...document.querySelectorAll('g.node')].map(g => [g.dataset.id, g.dataset.role,
                 g.dataset.highlighted, g.getAttribute('transform')]),
        edges: [...document.querySelectorAll('path.edge')].map(p => [p.dataset.src, p.dataset.dst,
                 p.getAttribute('stroke-width'), p.getAttribute('d')]),
        causal: document.querySelector('#causal-body').innerText,
      })"""
    )


def test_file_bytes_stay_within_budget_and_evicted_pairs_reopen(page, serve_root, synth_results):
    url = serve_root(synth_results)
    names = {
        r["class_id"]: r["name"]
        for r in pq.read_table(f"{synth_results}/classes.parquet", columns=["class_id", "name"]).to_pylist()
    }
    page.goto(f"{url}?original=0&target=1")
    wait_ready(page, "0-1")
    page.wait_for_selector("#causal-panel[data-state='ready']")
    first = graph_dom(page)
    _, nodes, _ = read_pair(synth_results, 0, 1)
    assert {n[0] for n in first["nodes"]} == {node_id(n) for n in nodes}
    assert first["edges"] and first["causal"]
    # under the default budget every Parquet byte received so far is held, each once
    log = page.evaluate("window.__bluff.traffic.log")
    assert page.evaluate("window.__bluff.fileCache.held") == sum(
        e["bytes"] for e in log if e["file"].endswith(".parquet")
    )
    page.evaluate(f"window.__bluff.fileCache.budget = {BUDGET}")

    parquet_bytes = 0
    for o, t in [(1, 0), (2, 0), (3, 0)]:
        open_pair(page, names, o, t)
        c = page.evaluate("window.__bluff.fileCache")
        assert 0 < c["held"] <= BUDGET and c["peak"] <= BUDGET, c
        log = page.evaluate("window.__bluff.traffic.log")
        parquet_bytes = sum(e["bytes"] for e in log if e["file"].endswith(".parquet"))
    # without the budget every byte read would still be held; with it, files were closed
    assert parquet_bytes > BUDGET + 100_000 and c["evictions"] > 0

    n0 = page.evaluate("window.__bluff.traffic.log.length")
    open_pair(page, names, 0, 1)
    again = page.evaluate("window.__bluff.traffic.log")[n0:]
    for kind in ("nodes", "edges", "causal", "causal_curve"):
        rel = f"{kind}/original=0/part-0.parquet"
        got = [e for e in again if e["file"] == rel]
        # opened again: the footer suffix first (a small file is whole in it)
        assert got and got[0]["range"].startswith("bytes=-") and got[0]["status"] == 206, (rel, got)
    assert graph_dom(page) == first
    c = page.evaluate("window.__bluff.fileCache")
    assert 0 < c["held"] <= BUDGET and c["peak"] <= BUDGET, c
