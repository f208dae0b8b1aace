"""The viewer in headless Chromium, reading results from `bluff serve` with range requests.

Expected values come from the Parquet files read with pyarrow and the highlight rule implemented
again in Python (viewer_helpers), never from the viewer itself.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import pyarrow.parquet as pq
import pytest

from viewer_helpers import expected_edges, expected_highlight, expected_width, node_id, shot, wait_ready
from viewer_synth import make_results, read_pair

pytestmark = pytest.mark.browser

def pick(page, which: str, name: str) -> None:
    """Choose ``name`` in the header picker ``which`` ("original"/"target") by typing and clicking."""
    page.click(f"#pick-{which} .picker-button")
    page.fill(f"#pick-{which} input", name)
    page.click(f"#pick-{which} li[role=option]:text-is('{name}')")


def graph_state(page) -> dict:
    return page.evaluate(
        """() => ({
        nodes: [...document.querySelectorAll('g.node')].map(g => ({id: g.dataset.id, role: g.dataset.role,
                 hl: g.dataset.highlighted, glyph: g.dataset.glyph || null,
                 inner: g.querySelector('rect.inner').dataset.fill || null})),
        edges: [...document.querySelectorAll('path.edge')].map(p => ({src: p.dataset.src, dst: p.dataset.dst,
                 width: Number(p.getAttribute('stroke-width'))})),
      })"""
    )


def check_graph(page, nodes, edges, s, criterion="activated", npct=20, epct=30, filter_="full"):
    st = graph_state(page)
    hl = expected_highlight(nodes, s, criterion, npct)
    if filter_ == "full":
        assert Counter(n["role"] for n in st["nodes"]) == Counter(n["role"] for n in nodes)
        assert {n["id"] for n in st["nodes"]} == {node_id(n) for n in nodes}
    assert {n["id"] for n in st["nodes"] if n["hl"] == "1"} == hl
    exp = expected_edges(edges, hl, s, criterion, epct)
    drawn = {(e["src"], e["dst"]): e["width"] for e in st["edges"]}
    want = {(f"{e['src_layer']}-{e['src_channel']}", f"{e['dst_layer']}-{e['dst_channel']}"): e for e in exp}
    assert set(drawn) == set(want)
    for k, e in want.items():
        assert drawn[k] == pytest.approx(expected_width(e, edges, s), rel=1e-5)
    return st, hl, want


def strengths(root) -> list[float]:
    import json
    from pathlib import Path

    return [0.0] + json.loads((Path(root) / "manifest.json").read_text())["strengths"]


@pytest.fixture(params=["synthetic", "pipeline"])
def results(request, synth_results):
    """The synthetic root, and the real pipeline's demo root (tests/conftest.py ``demo_results``)."""
    if request.param == "synthetic":
        return request.param, synth_results
    return request.param, request.getfixturevalue("demo_results")


def test_pick_pair_counts_and_edges_follow_strength(page, serve_root, results):
    kind, results = results
    url = serve_root(results)
    classes = pq.read_table(f"{results}/classes.parquet").to_pylist()
    idx = pq.read_table(f"{results}/pair_index.parquet").to_pylist()
    names = {c["class_id"]: c["name"] for c in classes}
    last = max(idx, key=lambda r: (r["original"], r["target"]))
    o, t = last["original"], last["target"]
    page.goto(url)
    wait_ready(page)
    pick(page, "original", names[o])
    assert page.locator("svg#graph").get_attribute("data-state") == "empty"  # target reset, as in Bluff
    pick(page, "target", names[t])
    wait_ready(page, f"{o}-{t}")
    row, nodes, edges = read_pair(results, o, t)
    s = int(page.input_value("#strength"))
    assert s == 2  # the original's default: the 2nd strength (0.10 of 0.05..0.50)
    st0, _, want0 = check_graph(page, nodes, edges, s)
    shot(page, f"main-{kind}")

    # move the strength with the keyboard: widths and the drawn set follow it
    page.focus("#strength")
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    s2 = int(page.input_value("#strength"))
    assert s2 == s + 4
    st1, _, want1 = check_graph(page, nodes, edges, s2)
    common = set(want0) & set(want1)
    w0 = {(e["src"], e["dst"]): e["width"] for e in st0["edges"]}
    w1 = {(e["src"], e["dst"]): e["width"] for e in st1["edges"]}
    assert any(abs(w0[k] - w1[k]) > 1e-6 for k in common) or set(want0) != set(want1)
    # the per-pair success rate shown matches the Parquet
    text = page.text_content("#success-text")
    assert f"{row['n_success'][s2 - 1]}/{row['n_images']}" in text
    # every other criterion, at the new strength
    for crit in ("changed", "excited", "inhibited"):
        page.select_option("#criterion", crit)
        check_graph(page, nodes, edges, s2, criterion=crit)
    page.select_option("#criterion", "activated")
    # top-% sliders
    page.eval_on_selector("#neuron-pct", "el => { el.value = '50'; el.dispatchEvent(new Event('input')); }")
    page.eval_on_selector("#edge-pct", "el => { el.value = '70'; el.dispatchEvent(new Event('input')); }")
    check_graph(page, nodes, edges, s2, npct=50, epct=70)


def test_strength_zero_is_benign_and_nan_strength(page, serve_root, synth_results):
    """Strength 0 ranks by benign activation; a strength with no successful attack highlights nothing."""
    idx = pq.read_table(f"{synth_results}/pair_index.parquet").to_pylist()
    row = next(r for r in idx if r["n_success"][0] == 0)
    o, t = row["original"], row["target"]
    url = serve_root(synth_results)
    page.goto(f"{url}?original={o}&target={t}&eps=0")
    wait_ready(page, f"{o}-{t}")
    _, nodes, edges = read_pair(synth_results, o, t)
    check_graph(page, nodes, edges, 0)
    page.keyboard.press("ArrowRight")  # body focus: arrow keys move the strength
    assert page.input_value("#strength") == "1"
    st, hl, want = check_graph(page, nodes, edges, 1)
    assert hl == set() and want == {}
    assert "0/" in page.text_content("#success-text")


def test_hover_detail_pin_filter_compare(page, serve_root, synth_results):
    url = serve_root(synth_results)
    o, t = 2, 3
    page.goto(f"{url}?original={o}&target={t}")
    wait_ready(page, f"{o}-{t}")
    _, nodes, edges = read_pair(synth_results, o, t)
    s = int(page.input_value("#strength"))
    hl = expected_highlight(nodes, s, "activated", 20)
    first = sorted(hl)[0]
    node = next(n for n in nodes if node_id(n) == first)

    # hover: id label, flowing incident edges, detail view with images and chart
    page.hover(f"g.node[data-id='{first}']")
    page.wait_for_selector(f"#detail[data-id='{first}'] img.feature-vis")
    assert page.text_content("#detail .detail-id").startswith(first)
    page.wait_for_function(
        "() => { const i = document.querySelector('#detail img.feature-vis'); return i && i.complete && i.naturalWidth > 0; }"
    )
    assert page.locator("#detail img.patch").count() == 4
    finite = [v for v in [node["importance_original"], *node["importance_attacked"]] if v is not None and not math.isnan(v)]
    assert page.locator("#detail circle.act-dot").count() == len(finite)
    assert page.locator("#detail circle.act-dot.current").count() == 1
    assert page.locator("#detail line.ref-original").count() == 1
    assert page.locator("#detail line.ref-target").count() == 1
    assert page.locator(f"g.node.hover[data-id='{first}'] text.node-label").is_visible()
    incident = [e for e in graph_state(page)["edges"] if first in (e["src"], e["dst"])]
    assert page.locator("path.edge.flow").count() == len(incident)
    shot(page, "hover-detail")

    # click pins two neurons; "pinned only" shows exactly those, compactly re-laid-out
    second = sorted({node_id(n) for n in nodes} - hl)[0]
    page.click(f"g.node[data-id='{first}']")
    page.click(f"g.node[data-id='{second}']")
    page.mouse.move(5, 5)
    assert page.locator("g.node.pinned").count() == 2
    page.check("input[name=filter][value=pinned]")
    page.wait_for_function("document.querySelectorAll('g.node').length === 2")
    assert {n["id"] for n in graph_state(page)["nodes"]} == {first, second}
    page.check("input[name=filter][value=highlighted]")
    page.wait_for_function(f"document.querySelectorAll('g.node').length === {len(hl)}")
    assert {n["id"] for n in graph_state(page)["nodes"]} == hl
    page.wait_for_timeout(1700)  # the 1.5 s re-layout transition
    shot(page, "filter-highlighted")
    page.check("input[name=filter][value=full]")
    page.wait_for_function(f"document.querySelectorAll('g.node').length === {len(nodes)}")

    # compare mode: glyphs per node from the weaker/stronger highlight sets
    page.check("#compare")
    assert page.is_disabled("#strength")
    eps = strengths(synth_results)
    w, st_ = int(page.input_value("#weaker")), int(page.input_value("#stronger"))
    assert (eps[w], eps[st_]) == (pytest.approx(0.05), pytest.approx(0.45))  # 1st and next-to-last
    # the pointers cannot cross
    page.eval_on_selector("#weaker", "el => { el.value = '10'; el.dispatchEvent(new Event('input')); }")
    assert int(page.input_value("#weaker")) == st_ - 1
    w = st_ - 1
    page.eval_on_selector("#weaker", "el => { el.value = '2'; el.dispatchEvent(new Event('input')); }")
    w = 2
    weak = expected_highlight(nodes, w, "activated", 20)
    strong = expected_highlight(nodes, st_, "activated", 20)
    got = {n["id"]: (n["glyph"], n["inner"]) for n in graph_state(page)["nodes"]}
    for n in nodes:
        i = node_id(n)
        a, b = i in weak, i in strong
        exp = ("both", None) if a and b else ("weaker", "role") if a else ("stronger", "white") if b else ("none", None)
        assert got[i] == exp, i
    assert page.locator("#legend .legend-item").all_text_contents() == ["N/A", "Weaker", "Stronger", "Both"]
    # edges of the chosen attack
    exp_edges = expected_edges(edges, strong, st_, "activated", 30)
    assert page.locator("path.edge").count() == len(exp_edges)
    page.select_option("#compare-edges", "weaker")
    assert page.locator("path.edge").count() == len(expected_edges(edges, weak, w, "activated", 30))
    shot(page, "compare")

    # URL round trip: reload the URL and get the same view
    q = parse_qs(urlsplit(page.url).query)
    assert q["original"] == [str(o)] and q["target"] == [str(t)] and "compare" in q
    assert set(q["pins"][0].split(",")) == {first, second}
    before = graph_state(page)
    page.goto(page.url)
    wait_ready(page, f"{o}-{t}")
    assert graph_state(page) == before
    assert page.is_checked("#compare")
    assert page.input_value("#strength") == str(s) and page.input_value("#weaker") == str(w)

    # Esc unpins everything
    page.keyboard.press("Escape")
    assert page.locator("g.node.pinned").count() == 0
    assert "pins" not in parse_qs(urlsplit(page.url).query)


def test_pair_explorer_sorts_and_opens(page, serve_root, synth_results):
    url = serve_root(synth_results)
    page.goto(url)
    wait_ready(page)
    idx = pq.read_table(f"{synth_results}/pair_index.parquet").to_pylist()
    page.click("#open-explorer")
    page.select_option("#explorer-strength", "2")  # eps index 2 -> 0.15

    def rows():
        return page.eval_on_selector_all(
            "#explorer-table tbody tr", "trs => trs.map(r => [Number(r.dataset.original), Number(r.dataset.target)])"
        )

    page.click("th[data-key=success]")  # already the sort key (descending) -> ascending
    exp = sorted(idx, key=lambda r: (r["success_rate"][2], r["original"], r["target"]))
    assert [tuple(x) for x in rows()] == [(r["original"], r["target"]) for r in exp]
    page.click("th[data-key=exploited]")
    exp = sorted(idx, key=lambda r: (-r["n_exploited"], r["original"], r["target"]))
    assert [tuple(x) for x in rows()] == [(r["original"], r["target"]) for r in exp]
    assert page.get_attribute("th[data-key=exploited]", "aria-sort") == "descending"
    shot(page, "explorer")
    top = exp[0]
    page.click(f"#explorer-table tbody tr[data-original='{top['original']}'][data-target='{top['target']}']")
    wait_ready(page, f"{top['original']}-{top['target']}")
    assert page.is_hidden("#explorer")


def test_class_names_render_as_text(page, serve_root, synth_results):
    url = serve_root(synth_results)
    page.goto(f"{url}?original=2&target=0")
    wait_ready(page, "2-0")
    assert page.text_content("#pick-original .picker-button") == "<b>two</b> & co ▾"
    assert page.locator("header b").count() == 0
    assert page.locator("svg#graph text.group-title.original").text_content() == "<b>two</b> & co"


def test_errors_are_shown_not_blank(page, serve_root, synth_results, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(synth_results, broken)
    f = broken / "nodes" / "original=1" / "part-0.parquet"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])  # truncated: no footer
    url = serve_root(broken)
    page.goto(f"{url}?original=1&target=0")
    page.wait_for_selector("#error:not([hidden])")
    msg = page.text_content("#error")
    assert "nodes/original=1/part-0.parquet" in msg and "Parquet" in msg
    shot(page, "error-malformed")
    # a pair that was not computed
    page.goto(f"{url}?original=0&target=0")
    page.wait_for_selector("#error:not([hidden])")
    assert "Pair not found" in page.text_content("#error")
    # a healthy pair of the same root still works
    page.goto(f"{url}?original=0&target=1")
    wait_ready(page, "0-1")
    assert page.is_hidden("#error")
    # a missing root
    page.goto(f"{url}?root=/nowhere/")
    page.wait_for_selector("#error:not([hidden])")
    assert "manifest.json" in page.text_content("#error") and "404" in page.text_content("#error")
    # a results root without pair_index
    (broken / "pair_index.parquet").unlink()
    page.goto(url)
    page.wait_for_selector("#error:not([hidden])")
    assert "pair_index.parquet" in page.text_content("#error")


def test_target_chunks_read_the_right_part(page, serve_root, tmp_path):
    """Pairs split over part-<j> files (the pipeline's target_chunk): the viewer reads only the
    pair's part, at its row group."""
    root = make_results(tmp_path / "chunked", seed=2, classes=6, assets=False, target_chunk=2)
    row, nodes, edges = read_pair(root, 4, 5)
    assert row["part"] == 2 and row["row_group"] == 0  # targets 0,1 | 2,3 | 5
    url = serve_root(root)
    page.goto(f"{url}?original=4&target=5")
    wait_ready(page, "4-5")
    check_graph(page, nodes, edges, 2)
    files = page.evaluate("Object.keys(window.__bluff.traffic.byFile)")
    assert {f for f in files if f.startswith(("nodes/", "edges/"))} == {
        "nodes/original=4/part-2.parquet", "edges/original=4/part-2.parquet"}
    row, nodes, edges = read_pair(root, 4, 3)
    assert (row["part"], row["row_group"]) == (1, 1)
    pick(page, "target", "three")
    wait_ready(page, "4-3")
    check_graph(page, nodes, edges, 2)
