"""The viewer in headless Chromium, reading schema-version-2 results from `bluff serve` with range requests.

Expected values come from the Parquet files read with pyarrow or DuckDB and the highlight rule
implemented again in Python (viewer_helpers), never from the viewer itself.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from bluff_ray.results import layout
from viewer_helpers import expected_edges, expected_highlight, expected_width, node_id, shot, wait_ready
from viewer_synth import CLASS_NAMES, make_results, make_v1_root, manifest, pair_index, read_pair

pytestmark = pytest.mark.browser


def pick(page, which: str, name: str) -> None:
    """Choose ``name`` in the header picker ``which`` ("original"/"target") by typing and clicking."""
    page.click(f"#pick-{which} .picker-button")
    page.fill(f"#pick-{which} input", name)
    page.locator(f"#pick-{which} ul").get_by_text(name, exact=True).click()


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
    return [0.0] + manifest(root)["strengths"]


def names_of(root) -> dict[int, str]:
    return {
        r["class_id"]: r["name"]
        for r in pq.read_table(f"{root}/classes.parquet", columns=["class_id", "name"]).to_pylist()
    }


def all_pairs(root) -> list[tuple[int, int]]:
    con = duckdb.connect()
    return con.execute(
        f"select original, target from read_parquet('{root}/pair_index/*/*.parquet', hive_partitioning=true) "
        "order by original, target"
    ).fetchall()


@pytest.fixture(params=["synthetic", pytest.param("pipeline", marks=pytest.mark.pipeline)])
def results(request, synth_results):
    """The synthetic root, and the real pipeline's demo root (tests/conftest.py ``demo_results``)."""
    if request.param == "synthetic":
        return request.param, synth_results
    return request.param, request.getfixturevalue("demo_results")


# --- one pair: the graph, the highlight rule, strengths -------------------------------------------------


def test_pick_pair_counts_and_edges_follow_strength(page, serve_root, results):
    kind, results = results
    url = serve_root(results)
    names = names_of(results)
    o, t = all_pairs(results)[-1]
    page.goto(url)
    wait_ready(page)
    assert page.evaluate("window.__bluff.state") == "ready", page.evaluate("window.__bluff.error")
    pick(page, "original", names[o])
    assert page.locator("svg#graph").get_attribute("data-state") == "empty"  # target reset, as in Bluff
    page.wait_for_selector("#pick-target:not([data-options='0'])")
    pick(page, "target", names[t])
    wait_ready(page, f"{o}-{t}")
    row, nodes, edges = read_pair(results, o, t)
    s = int(page.input_value("#strength"))
    landing = manifest(results).get("landing")
    assert s == (landing["strength"] if landing else 2)  # the landing view's strength stays
    st0, _, want0 = check_graph(page, nodes, edges, s)
    shot(page, f"main-{kind}")

    # move the strength with the keyboard: widths and the drawn set follow it
    page.focus("#strength")
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    s = 2
    st0, _, want0 = check_graph(page, nodes, edges, s)
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
    assert f"{row['n_success'][s2 - 1]}/{row['n_images']}" in text and f"eps {strengths(results)[s2]:.2f}" in text
    # every other criterion, at the new strength
    for crit in ("changed", "excited", "inhibited"):
        page.select_option("#criterion", crit)
        check_graph(page, nodes, edges, s2, criterion=crit)
    page.select_option("#criterion", "activated")
    # top-% sliders
    page.eval_on_selector("#neuron-pct", "el => { el.value = '50'; el.dispatchEvent(new Event('input')); }")
    page.eval_on_selector("#edge-pct", "el => { el.value = '70'; el.dispatchEvent(new Event('input')); }")
    check_graph(page, nodes, edges, s2, npct=50, epct=70)


def test_strength_zero_is_benign_and_no_success_is_explained(page, serve_root, synth_results):
    """Strength 0 ranks by benign activation; a strength with no successful attack highlights nothing
    and the graph says why (and where the first success is)."""
    o, t = next((o, t) for o, t in all_pairs(synth_results) if read_pair(synth_results, o, t)[0]["n_success"][0] == 0)
    row, nodes, edges = read_pair(synth_results, o, t)
    first = next(i for i, n in enumerate(row["n_success"]) if n > 0)
    names = names_of(synth_results)
    eps = manifest(synth_results)["strengths"]
    url = serve_root(synth_results)
    page.goto(f"{url}?original={o}&target={t}&eps=0")
    wait_ready(page, f"{o}-{t}")
    check_graph(page, nodes, edges, 0)
    assert page.is_hidden("#explain")
    page.keyboard.press("ArrowRight")  # body focus: arrow keys move the strength
    assert page.input_value("#strength") == "1"
    st, hl, want = check_graph(page, nodes, edges, 1)
    assert hl == set() and want == {}
    assert "0/" in page.text_content("#success-text")
    assert page.is_visible("#explain")
    assert page.text_content("#explain") == (
        f"No attack from {names[o]} to {names[t]} succeeded at eps {eps[0]:.2f}: move the strength slider right "
        f"(first success at eps {eps[first]:.2f})."
    )
    shot(page, "no-success")
    page.keyboard.press("ArrowRight")
    assert page.is_hidden("#explain")


def test_hover_detail_pin_filter_compare(page, serve_root, synth_results):
    url = serve_root(synth_results)
    o, t = 2, 3
    page.goto(f"{url}?original={o}&target={t}")
    wait_ready(page, f"{o}-{t}")
    row, nodes, edges = read_pair(synth_results, o, t)
    s = int(page.input_value("#strength"))
    assert s == 2  # a URL without eps: the 2nd strength (0.10 of 0.05..0.50)
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
    finite = [
        v for v in [node["importance_original"], *node["importance_attacked"]] if v is not None and not math.isnan(v)
    ]
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
    # the success text describes the two compared strengths
    text = page.text_content("#success-text")
    assert text.startswith(f"Weaker, eps {eps[w]:.2f}: {row['n_success'][w - 1]}/{row['n_images']}")
    assert f"stronger, eps {eps[st_]:.2f}: {row['n_success'][st_ - 1]}/{row['n_images']}" in text
    assert not text.startswith("At ")
    assert page.locator(".success-chart .bar.current").count() == 2
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


def test_landing_view(page, serve_root, synth_results):
    """No URL state: the manifest's landing pair at its strength."""
    land = manifest(synth_results)["landing"]
    url = serve_root(synth_results)
    page.goto(url)
    wait_ready(page, f"{land['original']}-{land['target']}")
    assert int(page.input_value("#strength")) == land["strength"]
    q = parse_qs(urlsplit(page.url).query)
    assert q["original"] == [str(land["original"])] and q["target"] == [str(land["target"])]
    assert float(q["eps"][0]) == pytest.approx(strengths(synth_results)[land["strength"]])


def test_class_names_render_as_text_and_long_ones_are_cut(page, serve_root, synth_results):
    url = serve_root(synth_results)
    page.goto(f"{url}?original=2&target=0")
    wait_ready(page, "2-0")
    assert page.text_content("#pick-original .picker-button") == "<b>two</b> & co ▾"
    assert page.locator("header b").count() == 0
    assert page.locator("svg#graph text.group-title.original tspan.label").text_content() == "<b>two</b> & co"
    # a long target name: cut with an ellipsis, the full name in the tooltip, no title overlaps another
    long = CLASS_NAMES[4]
    page.goto(f"{url}?original=0&target=4")
    wait_ready(page, "0-4")
    title = page.locator("svg#graph text.group-title.target")
    label = title.locator("tspan.label").text_content()
    assert label.endswith("…") and long.startswith(label[:-1].rstrip()) and len(label) < len(long)
    assert title.get_attribute("data-full") == long and title.get_attribute("data-truncated") == "1"
    assert title.locator("title").text_content() == long
    boxes = page.evaluate("""() => [...document.querySelectorAll('svg#graph text.group-title')]
        .map(t => { const b = t.getBoundingClientRect(); return [b.left, b.right]; }).sort((a, b) => a[0] - b[0])""")
    assert len(boxes) == 4
    for (_l0, r0), (l1, _r1) in zip(boxes, boxes[1:]):
        assert r0 <= l1, boxes
    assert page.get_attribute("#pick-target .picker-button", "title") == f"{long} (4)"
    shot(page, "long-name")


# --- pickers -----------------------------------------------------------------------------------------------


def test_pickers_mark_uncomputed_and_list_computed_targets(page, serve_root, synth_results):
    url = serve_root(synth_results)
    page.goto(f"{url}?original=1&target=0")
    wait_ready(page, "1-0")
    page.click("#pick-original .picker-button")
    li = page.locator("#pick-original li[data-value='4']")
    assert li.get_attribute("aria-disabled") == "true" and "not computed" in li.text_content()
    li.click(force=True)  # disabled: nothing happens
    assert page.locator("#pick-original").get_attribute("data-value") == "1"
    page.keyboard.press("Escape")
    page.click("#pick-target .picker-button")
    got = page.eval_on_selector_all("#pick-target li[role=option]", "ls => ls.map(l => Number(l.dataset.value))")
    assert got == [r["target"] for r in pair_index(synth_results, 1)] == [0, 2, 3, 4]


def test_picker_search_among_1000_classes(page, serve_root, scale_results):
    url = serve_root(scale_results)
    classes = pq.read_table(f"{scale_results}/classes.parquet", columns=["class_id", "wnid", "name"]).to_pylist()
    page.goto(url)
    wait_ready(page)
    page.click("#pick-original .picker-button")
    # the open list holds at most a capped number of items, not 1000
    assert page.locator("#pick-original li").count() <= 61
    c = classes[777]
    page.fill("#pick-original input", c["name"])
    assert page.eval_on_selector_all(
        "#pick-original li[role=option]", "ls => ls.map(l => Number(l.dataset.value))"
    ) == [777]
    page.fill("#pick-original input", c["wnid"])
    assert page.eval_on_selector_all(
        "#pick-original li[role=option]", "ls => ls.map(l => Number(l.dataset.value))"
    ) == [777]
    page.fill("#pick-original input", "giant")
    want = [r["class_id"] for r in classes if "giant" in r["name"].lower() or "giant" in r["wnid"]]
    assert len(want) > 60
    shown = page.eval_on_selector_all("#pick-original li[role=option]", "ls => ls.map(l => Number(l.dataset.value))")
    assert shown == want[: len(shown)] and len(shown) <= 60
    assert page.text_content("#pick-original li.more").startswith(f"{len(want) - len(shown)} more")
    # every keystroke filters 1000 names quickly (no lag)
    ms = page.evaluate("""() => { const inp = document.querySelector('#pick-original input'); const qs = ['s', 'si', 'sil',
        'silv', 'silve', 'silver', 'silver ', 'silver f', 'g', 'n1', '']; const t0 = performance.now();
        for (const q of qs) { inp.value = q; inp.dispatchEvent(new Event('input')); } return (performance.now() - t0) / qs.length; }""")
    assert ms < 30, ms
    page.fill("#pick-original input", classes[3]["wnid"])
    page.keyboard.press("Enter")
    page.wait_for_selector("#pick-target:not([data-options='0'])")
    pick(page, "target", classes[998]["name"])
    wait_ready(page, "3-998")


# --- pair explorer --------------------------------------------------------------------------------------------


def explorer_rows(page) -> list[tuple[int, int]]:
    return [
        tuple(x)
        for x in page.eval_on_selector_all(
            "#explorer-table tbody tr", "trs => trs.map(r => [Number(r.dataset.original), Number(r.dataset.target)])"
        )
    ]


def explorer_wait(page) -> None:
    page.wait_for_function("['ready', 'filled'].includes(document.querySelector('#explorer').dataset.state)")


def expected_order(root, by: str, i: int, desc: bool, where: str = "true") -> list[tuple[int, int]]:
    """The explorer's order, from DuckDB over the pair_index partitions: value descending (or the
    finite values ascending, ties reversed), then the pairs without a value by (original, target)."""
    v = "n_exploited" if by == "exploited" else f"success_rate[{i + 1}]"
    src = f"(select original, target, {v} as v from read_parquet('{root}/pair_index/*/*.parquet', hive_partitioning=true) where {where})"
    order = "v desc, original, target" if desc else "v asc, original desc, target desc"
    con = duckdb.connect()
    valid = con.execute(f"select original, target from {src} where isfinite(v) order by {order}").fetchall()
    nan = con.execute(
        f"select original, target from {src} where v is null or not isfinite(v) order by original, target"
    ).fetchall()
    return [tuple(r) for r in valid + nan]


def test_pair_explorer_sorts_filters_and_opens(page, serve_root, synth_results):
    url = serve_root(synth_results)
    page.goto(url)
    wait_ready(page)
    page.click("#open-explorer")
    page.select_option("#explorer-strength", "2")  # eps index 2 -> 0.15
    explorer_wait(page)
    assert explorer_rows(page) == expected_order(synth_results, "success", 2, True)
    page.click("th[data-key=success]")  # already the sort key (descending) -> ascending
    explorer_wait(page)
    assert explorer_rows(page) == expected_order(synth_results, "success", 2, False)
    assert page.get_attribute("th[data-key=success]", "aria-sort") == "ascending"
    page.click("th[data-key=exploited]")
    explorer_wait(page)
    exp = expected_order(synth_results, "exploited", 0, True)
    assert explorer_rows(page) == exp
    assert page.get_attribute("th[data-key=exploited]", "aria-sort") == "descending"
    # every row shows names, the success at the strength and the exploited count (from pair_index)
    page.wait_for_selector("#explorer[data-state='filled']")
    names = names_of(synth_results)
    first = page.locator("#explorer-table tbody tr").first
    o, t = exp[0]
    row = read_pair(synth_results, o, t)[0]
    cells = first.locator("td").all_text_contents()
    assert cells[:2] == [names[o], names[t]]
    assert cells[2].endswith(f"({row['n_success'][2]}/{row['n_images']})")
    assert cells[3] == str(row["n_exploited"])
    shot(page, "explorer")
    # filter by an original: its partition, sorted in memory
    page.click("#explorer-original .picker-button")
    page.locator("#explorer-original ul").get_by_text(names[2], exact=True).click()
    explorer_wait(page)
    assert explorer_rows(page) == expected_order(synth_results, "exploited", 0, True, "original = 2")
    page.click("th[data-key=success]")
    explorer_wait(page)
    assert explorer_rows(page) == expected_order(synth_results, "success", 2, True, "original = 2")
    # and by a target as well: one pair
    page.click("#explorer-target .picker-button")
    page.locator("#explorer-target ul").get_by_text(names[0], exact=True).click()
    explorer_wait(page)
    assert explorer_rows(page) == [(2, 0)]
    # a target alone: the overview matrix's column
    page.click("#explorer-original .picker-button")
    page.locator("#explorer-original ul").get_by_text("any original", exact=True).click()
    explorer_wait(page)
    assert explorer_rows(page) == [tuple(x) for x in expected_by_overview(synth_results, 2, 0, True)]
    page.click("th[data-key=exploited]")
    page.wait_for_selector("#explorer[data-state='error']")
    assert "also filter by an original" in page.text_content("#explorer-msg")
    page.click("#explorer-target .picker-button")
    page.locator("#explorer-target ul").get_by_text("any target", exact=True).click()
    explorer_wait(page)
    assert explorer_rows(page) == exp
    # Enter on a row opens the pair
    page.focus(f"#explorer-table tbody tr[data-original='{o}'][data-target='{t}']")
    page.keyboard.press("Enter")
    wait_ready(page, f"{o}-{t}")
    assert page.is_hidden("#explorer")
    # a click too
    page.keyboard.press("p")
    explorer_wait(page)
    o2, t2 = exp[1]
    page.click(f"#explorer-table tbody tr[data-original='{o2}'][data-target='{t2}']")
    wait_ready(page, f"{o2}-{t2}")


def overview_matrix(root, i: int) -> list[bytes]:
    """Row group i of overview/success.parquet (pyarrow): one byte string per original."""
    t = pq.ParquetFile(f"{root}/overview/success.parquet").read_row_group(i)
    assert t.column("strength").to_pylist() == [i] * t.num_rows
    assert t.column("original").to_pylist() == list(range(t.num_rows))
    return t.column("success").to_pylist()


def expected_by_overview(root, i: int, target: int, desc: bool) -> list[tuple[int, int]]:
    m = overview_matrix(root, i)
    rows = [(m[o][target], o) for o in range(len(m)) if o != target and m[o][target] != 255]
    rows.sort(key=lambda x: (-x[0], x[1]))
    if not desc:
        rows.reverse()
    return [(o, target) for _, o in rows]


def test_pair_explorer_at_1000_classes(page, serve_root, scale_results):
    """999,000 pairs: pages of rankings/ rows, right against DuckDB, never more than a page of rows."""
    url = serve_root(scale_results)
    page.goto(url)
    wait_ready(page)
    page.click("#open-explorer")
    page.wait_for_selector("#explorer[data-state='filled']")
    n = len(all_pairs(scale_results))
    assert n == 999_000
    assert page.get_attribute("#explorer", "data-total") == str(n)

    def check(want_rows, page_no):
        explorer_wait(page)
        got = explorer_rows(page)
        assert len(got) <= 50 and page.locator("#explorer-table tbody tr").count() == len(got)
        assert got == want_rows[page_no * 50 : (page_no + 1) * 50]
        ms = int(page.get_attribute("#explorer", "data-ms"))
        assert ms < 300, ms  # the target is 200 ms (see the median below); a loaded 2-core box adds noise
        return ms

    times = []
    page.wait_for_timeout(300)  # the other rankings' footers are read in the background
    page.select_option("#explorer-strength", "3")
    desc = expected_order(scale_results, "success", 3, True)
    times.append(check(desc, 0))
    page.click("th[data-key=success]")
    asc = expected_order(scale_results, "success", 3, False)
    times.append(check(asc, 0))
    page.click("#explorer-next")
    times.append(check(asc, 1))
    page.keyboard.press("PageDown")
    times.append(check(asc, 2))
    page.click("#explorer-last")
    last = (n - 1) // 50
    times.append(check(asc, last))
    assert page.text_content("#explorer-range") == f"{last * 50 + 1:,}–{n:,} of {n:,} pairs"
    # the last rows have no success rate (a class the model never classifies correctly): "—"
    page.wait_for_selector("#explorer[data-state='filled']")
    assert page.locator("#explorer-table tbody tr td.success").last.text_content() == "—"
    page.click("th[data-key=exploited]")
    exp = expected_order(scale_results, "exploited", 0, True)
    times.append(check(exp, 0))
    page.click("#explorer-next")
    times.append(check(exp, 1))
    # filter by original: its partition, sorted in memory
    page.click("#explorer-original .picker-button")
    page.fill("#explorer-original input", "n10000000")  # wnids are searchable too
    page.fill("#explorer-original input", names_of(scale_results)[500])
    page.keyboard.press("Enter")
    times.append(check(expected_order(scale_results, "exploited", 0, True, "original = 500"), 0))
    page.click("th[data-key=exploited]")
    times.append(check(expected_order(scale_results, "exploited", 0, False, "original = 500"), 0))
    shot(page, "explorer-1000")
    print("explorer interaction ms:", times)
    assert sorted(times)[len(times) // 2] < 200, times


# --- class overview (heatmap) ----------------------------------------------------------------------------


def ramp(b: int) -> tuple[int, int, int]:
    """The README's colour ramp: linear sRGB interpolation #fff7ec -> #7f0000 over b / 254; 255 = #bdbdbd."""
    if b == 255:
        return (189, 189, 189)
    lo, hi = (255, 247, 236), (127, 0, 0)
    t = b / 254
    return tuple(math.floor(lo[i] + (hi[i] - lo[i]) * t + 0.5) for i in range(3))  # JavaScript Math.round


def test_class_overview_heatmap_at_1000_classes(page, serve_root, scale_results):
    url = serve_root(scale_results)
    page.goto(url)
    wait_ready(page)
    assert page.evaluate("window.devicePixelRatio") == 1
    page.click("#open-overview")
    page.wait_for_selector("#overview[data-state='ready']")
    i = int(page.input_value("#overview-strength"))
    assert i == int(page.input_value("#strength")) - 1  # the slider's strength
    page.select_option("#overview-strength", "6")
    page.wait_for_selector("#overview[data-state='ready'][data-strength='6']")
    ms = int(page.get_attribute("#overview", "data-ms"))
    assert ms < 1000, ms
    assert page.get_attribute("#overview", "data-n") == "1000"
    shot(page, "overview-fit")
    # one pixel per cell; sampled pixels have the colour of the pair's success rate at eps index 6
    page.click("#overview-one")
    c = page.locator("#overview-canvas")
    assert float(c.get_attribute("data-scale")) == 1
    tx, ty = float(c.get_attribute("data-tx")), float(c.get_attribute("data-ty"))
    box = c.bounding_box()
    con = duckdb.connect()
    rates = {
        (o, t): r
        for o, t, r in con.execute(
            f"select original, target, success_rate[7] from read_parquet('{scale_results}/pair_index/*/*.parquet', "
            "hive_partitioning=true) where original between 400 and 600 and target % 37 = 1"
        ).fetchall()
    }
    samples = [(o, t) for (o, t) in rates if (o * 7 + t) % 13 == 0][:60] + [(450, 450)]
    rows = [o for o, _ in samples]
    assert min(rows) + ty >= 0 and max(rows) + ty < box["height"]
    px = page.evaluate(
        """(cells) => { const c = document.querySelector('#overview-canvas'); const x = c.getContext('2d');
        return cells.map(([o, t]) => Array.from(x.getImageData(t, o, 1, 1).data)); }""",
        [[int(o + ty), int(t + tx)] for o, t in samples],
    )
    for (o, t), p in zip(samples, px):
        r = rates.get((o, t))
        b = 255 if r is None or math.isnan(r) else int(round(r * 254))
        assert tuple(p[:3]) == ramp(b) and p[3] == 255, (o, t, r, p)
    # hover shows the two classes and the rate
    names = names_of(scale_results)
    o, t = 500, 250
    x, y = box["x"] + tx + t + 0.5, box["y"] + ty + o + 0.5
    page.mouse.move(x, y)
    tip = page.locator("#overview-tip")
    assert tip.get_attribute("data-original") == "500" and tip.get_attribute("data-target") == "250"
    r = read_pair(scale_results, o, t)[0]["success_rate"][6]
    assert (
        tip.text_content()
        == f"{names[o]} → {names[t]}" + f"{100 * round(r * 254) / 254:.1f}% of attacks succeed at eps 0.35"
    )
    # wheel zooms around the pointer (the cell stays under it), drag pans
    page.mouse.wheel(0, -400)
    page.wait_for_function("Number(document.querySelector('#overview-canvas').dataset.scale) > 1")
    s = float(c.get_attribute("data-scale"))
    tx, ty = float(c.get_attribute("data-tx")), float(c.get_attribute("data-ty"))
    assert math.floor((x - box["x"] - tx) / s) == t and math.floor((y - box["y"] - ty) / s) == o
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 100, y - 50, steps=5)
    page.mouse.up()
    assert float(c.get_attribute("data-tx")) == pytest.approx(tx - 100)
    assert float(c.get_attribute("data-ty")) == pytest.approx(ty - 50)
    shot(page, "overview-zoomed")
    # a click on a cell opens that pair
    tx, ty = float(c.get_attribute("data-tx")), float(c.get_attribute("data-ty"))
    page.mouse.click(box["x"] + tx + (t + 0.5) * s, box["y"] + ty + (o + 0.5) * s)
    wait_ready(page, f"{o}-{t}")
    assert page.is_hidden("#overview")
    assert int(page.input_value("#strength")) == 7  # the overview's strength became the slider's


def test_class_overview_small_root(page, serve_root, synth_results):
    """At 5 classes the whole matrix fits: integer pixels per cell, grey for pairs not computed."""
    url = serve_root(synth_results)
    page.goto(f"{url}?original=1&target=0&eps=0.15")
    wait_ready(page, "1-0")
    page.keyboard.press("o")
    page.wait_for_selector("#overview[data-state='ready'][data-strength='2']")
    c = page.locator("#overview-canvas")
    s = float(c.get_attribute("data-scale"))
    assert s >= 20 and s == int(s)
    tx, ty = float(c.get_attribute("data-tx")), float(c.get_attribute("data-ty"))
    m = overview_matrix(synth_results, 2)
    cells = [[o, t] for o in range(5) for t in range(5)]
    px = page.evaluate(
        """([cells, s, tx, ty]) => { const x = document.querySelector('#overview-canvas').getContext('2d');
        return cells.map(([o, t]) => Array.from(x.getImageData(Math.floor(tx + (t + 0.5) * s), Math.floor(ty + (o + 0.5) * s), 1, 1).data)); }""",
        [cells, s, tx, ty],
    )
    for (o, t), p in zip(cells, px):
        assert tuple(p[:3]) == ramp(m[o][t]), (o, t)
        if o == t or o == 4:
            assert m[o][t] == 255
    box = c.bounding_box()
    page.mouse.click(box["x"] + tx + 3.5 * s, box["y"] + ty + 2.5 * s)
    wait_ready(page, "2-3")
    shot(page, "overview-small")


# --- startup and pair costs ---------------------------------------------------------------------------------


def load_costs(browser, url: str) -> dict:
    ctx = browser.new_context(viewport={"width": 1400, "height": 860})
    pg = ctx.new_page()
    pg.goto(url)
    pg.wait_for_selector("svg#graph[data-state='ready']")
    d = pg.evaluate(
        "({ms: window.__bluff.firstGraphMs, f: window.__bluff.firstGraphBytes, pair: document.querySelector('svg#graph').dataset.pair})"
    )
    ctx.close()
    return d


def row_group_span(path: Path, rg: int) -> int:
    """Bytes from the first to the last byte of a row group's column chunks."""
    md = pq.ParquetFile(path).metadata.row_group(rg)
    cols = [md.column(i) for i in range(md.num_columns)]
    start = min(c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in cols)
    end = max(
        (c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset) + c.total_compressed_size
        for c in cols
    )
    return end - start


def test_startup_and_pair_bytes_do_not_grow_with_pairs(browser, serve_root, mid_results, scale_results):
    costs = {}
    for name, root in (("30", mid_results), ("1000", scale_results)):
        url = serve_root(root)
        runs = [load_costs(browser, url) for _ in range(2)]
        land = manifest(root)["landing"]
        o = land["original"]
        for d in runs:
            assert d["pair"] == f"{o}-{land['target']}"
            # startup reads exactly these files: nothing else, nothing that holds all pairs
            row = read_pair(root, o, land["target"])[0]
            assert set(d["f"]) == {
                "manifest.json",
                "classes.parquet",
                f"pair_index/original={o}/part-0.parquet",
                f"nodes/original={o}/part-{row['part']}.parquet",
                f"edges/original={o}/part-{row['part']}.parquet",
            }
        f = runs[-1]["f"]
        startup = sum(v for k, v in f.items() if not k.startswith(("nodes/", "edges/")))
        pair = sum(v for k, v in f.items() if k.startswith(("nodes/", "edges/")))
        for k, v in f.items():
            if k.startswith(("nodes/", "edges/")):  # one footer read plus the pair's row group, nothing else
                p = Path(root) / k
                tail = layout.EDGES_TAIL_BYTES if k.startswith("edges/") else layout.VIEWER_TAIL_BYTES
                assert v <= min(tail, p.stat().st_size) + row_group_span(p, row["row_group"]), (k, v)
        costs[name] = dict(startup=startup, pair=pair, ms=min(d["ms"] for d in runs), pairs=len(all_pairs(root)))
    print("viewer costs:", costs)
    big, small = costs["1000"], costs["30"]
    assert big["startup"] < 150 * 1024
    assert big["pair"] < 100 * 1024
    # 1148x more pairs cost less than one byte per extra pair (what grows is the 1000 class names)
    assert (big["startup"] - small["startup"]) / (big["pairs"] - small["pairs"]) < 0.1
    assert big["ms"] < 1000, big


def test_opening_another_pair_reads_only_its_row_groups(page, serve_root, scale_results):
    url = serve_root(scale_results)
    page.goto(url)
    wait_ready(page)
    before = page.evaluate("({...window.__bluff.traffic.byFile})")
    o, t = 999, 0
    page.goto(f"{url}?original={o}&target={t}")  # a fresh page: startup for this original, then the pair
    wait_ready(page, f"{o}-{t}")
    page.wait_for_selector("#causal-panel[data-state='ready']")  # read after the graph is drawn
    f = page.evaluate("window.__bluff.traffic.byFile")
    row, nodes, edges = read_pair(scale_results, o, t)
    pair = {k: v for k, v in f.items() if k.startswith(("nodes/", "edges/", "causal/"))}
    assert set(pair) == {f"{k}/original={o}/part-{row['part']}.parquet" for k in ("nodes", "edges", "causal")}
    assert sum(pair.values()) < 100 * 1024, pair
    for k, v in pair.items():  # one footer read plus the pair's row group, nothing else
        p = Path(scale_results) / k
        tail = layout.EDGES_TAIL_BYTES if k.startswith("edges/") else layout.VIEWER_TAIL_BYTES
        assert v <= min(tail, p.stat().st_size) + row_group_span(p, row["row_group"]), (k, v)
    assert page.locator("g.node").count() == len(nodes)
    assert before  # the landing load fetched something
    # the causal rows, through the data layer
    causal = page.evaluate(f"window.__bluff.loadCausal({o}, {t})")
    want = [
        r
        for r in pq.read_table(Path(scale_results) / f"causal/original={o}/part-{row['part']}.parquet").to_pylist()
        if r["target"] == t
    ]
    got = sorted((c["strength"], c["layer"], c["set"], c["nNeurons"], c["nImages"]) for c in causal["rows"])
    assert got == sorted((r["strength"], r["layer"], r["set"], r["n_neurons"], int(r["recovery"][0])) for r in want)
    assert any(c["layer"] == "all" for c in causal["rows"]) or not want


# --- errors, versions, robustness ----------------------------------------------------------------------------


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
    assert "Pair not found" in page.text_content(
        "#error"
    ) and "pair_index/original=0/part-0.parquet" in page.text_content("#error")
    # an original that was not computed
    page.goto(f"{url}?original=4&target=0")
    page.wait_for_selector("#error:not([hidden])")
    assert "Pair not found" in page.text_content("#error") and "not computed as an original" in page.text_content(
        "#error"
    )
    # a healthy pair of the same root still works
    page.goto(f"{url}?original=0&target=1")
    wait_ready(page, "0-1")
    assert page.is_hidden("#error")
    # a missing root
    page.goto(f"{url}?root=/nowhere/")
    page.wait_for_selector("#error:not([hidden])")
    assert "manifest.json" in page.text_content("#error") and "404" in page.text_content("#error")
    # a missing pair_index partition
    shutil.rmtree(broken / "pair_index" / "original=2")
    page.goto(f"{url}?original=2&target=0")
    page.wait_for_selector("#error:not([hidden])")
    assert "pair_index/original=2/part-0.parquet" in page.text_content("#error")
    # a missing classes.parquet
    (broken / "classes.parquet").unlink()
    page.goto(url)
    page.wait_for_selector("#error:not([hidden])")
    assert "classes.parquet" in page.text_content("#error") and "404" in page.text_content("#error")


@pytest.mark.parametrize("version", [1, None])
def test_version1_root_says_to_rerun(page, serve_root, tmp_path, version):
    root = make_v1_root(tmp_path / "v1")
    if version is None:  # a manifest without schema_version
        import json

        m = json.loads((root / "manifest.json").read_text())
        del m["schema_version"]
        (root / "manifest.json").write_text(json.dumps(m))
    url = serve_root(root)
    page.goto(url)
    page.wait_for_selector("#error:not([hidden])")
    msg = page.text_content("#error")
    assert "older bluff_ray" in msg and "bluff run" in msg and "--overwrite" in msg and "manifest.json" in msg
    assert f"schema version {layout.SCHEMA_VERSION}" in msg
    shot(page, "error-version1")


def test_target_chunks_read_the_right_part(page, serve_root, tmp_path):
    """Pairs split over part-<j> files (targets_per_file): the viewer reads only the pair's part, at its row group."""
    root = make_results(tmp_path / "chunked", seed=2, classes=6, assets=False, targets_per_file=2)
    row, nodes, edges = read_pair(root, 4, 5)
    assert row["part"] == 2 and row["row_group"] == 0  # targets 0,1 | 2,3 | 5
    url = serve_root(root)
    page.goto(f"{url}?original=4&target=5")
    wait_ready(page, "4-5")
    check_graph(page, nodes, edges, 2)
    files = page.evaluate("Object.keys(window.__bluff.traffic.byFile)")
    assert {f for f in files if f.startswith(("nodes/", "edges/"))} == {
        "nodes/original=4/part-2.parquet",
        "edges/original=4/part-2.parquet",
    }
    row, nodes, edges = read_pair(root, 4, 3)
    assert (row["part"], row["row_group"]) == (1, 1)
    pick(page, "target", CLASS_NAMES[3])
    wait_ready(page, "4-3")
    check_graph(page, nodes, edges, 2)


def test_range_reads_check_every_response(page, serve_root, synth_results):
    """A bounded range handed back for a suffix request (seen with Chromium's HTTP cache) is refused
    and fetched again without the cache; if it persists the message names the file; a 200 to a
    range request is the whole file."""
    url = serve_root(synth_results)
    rel = "edges/original=2/part-0.parquet"
    data = (Path(synth_results) / rel).read_bytes()
    tail = layout.EDGES_TAIL_BYTES  # the viewer's suffix read of an edges file
    assert len(data) > tail + 1024  # a bounded range from the start cannot pass for the suffix
    seen = []

    def bad_suffix(route, request, always=False):
        rng = request.headers.get("range", "")
        seen.append(rng)
        if rng == f"bytes=-{tail}" and (always or len(seen) == 1):
            route.fulfill(
                status=206,
                body=data[:tail],
                headers={
                    "Content-Range": f"bytes 0-{tail - 1}/{len(data)}",
                    "Content-Type": "application/vnd.apache.parquet",
                    "Accept-Ranges": "bytes",
                },
            )
        else:
            route.continue_()

    page.route(f"**/{rel}", bad_suffix)
    page.goto(f"{url}?original=2&target=3")
    wait_ready(page, "2-3")
    _, nodes, edges = read_pair(synth_results, 2, 3)
    check_graph(page, nodes, edges, 2)
    assert seen[:2] == [f"bytes=-{tail}", f"bytes=-{tail}"]
    log = [e for e in page.evaluate("window.__bluff.traffic.log") if e["file"] == rel]
    assert [e["cache"] for e in log[:2]] == ["default", "no-store"]
    page.unroute(f"**/{rel}")

    # persistently inconsistent: a clear message naming the file
    seen.clear()
    page.route(f"**/{rel}", lambda route, request: bad_suffix(route, request, always=True))
    page.goto(f"{url}?original=2&target=3")
    page.wait_for_selector("#error:not([hidden])")
    msg = page.text_content("#error")
    assert rel in msg and "inconsistent" in msg and "does not end at the file's last byte" in msg
    page.unroute(f"**/{rel}")

    # a server that ignores Range (200, the whole file): one download, reused
    def whole(route, request):
        route.fulfill(status=200, body=data, headers={"Content-Type": "application/vnd.apache.parquet"})

    page.route(f"**/{rel}", whole)
    page.goto(f"{url}?original=2&target=3")
    wait_ready(page, "2-3")
    check_graph(page, nodes, edges, 2)
    log = [e for e in page.evaluate("window.__bluff.traffic.log") if e["file"] == rel]
    assert len(log) == 1 and log[0]["status"] == 200 and log[0]["bytes"] == len(data)


def test_failed_asset_index_is_retried(page, serve_root, synth_results):
    url = serve_root(synth_results)
    calls = []

    def flaky(route, request):
        calls.append(request.url)
        if len(calls) == 1:
            route.abort("failed")
        else:
            route.continue_()

    page.route("**/neurons/index.parquet", flaky)
    page.goto(f"{url}?original=2&target=3")
    wait_ready(page, "2-3")
    ids = page.eval_on_selector_all("g.node", "gs => gs.map(g => g.dataset.id)")
    page.hover(f"g.node[data-id='{ids[0]}']")
    page.wait_for_function(
        "() => { const d = document.querySelector('#detail .no-img'); return d && d.textContent === 'unavailable'; }"
    )
    page.mouse.move(5, 5)
    page.hover(f"g.node[data-id='{ids[1]}']")
    page.wait_for_selector(f"#detail[data-id='{ids[1]}'] img.feature-vis")
    assert len(calls) >= 2


# --- causal panel, neuron effects, effect rings -----------------------------------------------------------------


def _fin(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _pct(v: float) -> str:
    return f"{math.floor(100 * v + 0.5)}%" if _fin(v) else "—"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _verdict(p: float) -> str:
    return (
        "no null control"
        if not _fin(p)
        else "more than chance"
        if p >= 95
        else "less than chance"
        if p <= 5
        else "no more than chance"
    )


def _row(rows: list[dict], layer: str, i: int) -> dict | None:
    return next((r for r in rows if r["layer"] == layer and r["strength"] == i and r["set"] == "exploited"), None)


def expected_causal_sentence(rows: list[dict], pair: dict, eps: list[float], s: int) -> str:
    """What the panel must say, from the stored numbers alone (docs/FORMAT.md causal/)."""
    if s == 0:
        return (
            "Strength 0 shows benign images: patching needs a successful attack. Move the strength slider right "
            "to see what patching the exploited neurons does."
        )
    e = f"eps {eps[s - 1]:.2f}"
    if not pair["n_success"][s - 1]:
        return f"No attack succeeded at {e}: there is nothing to patch."
    r = _row(rows, "all", s - 1)
    if r is None or not _fin(r["recovery"][1]):
        return (
            f"No patching result at {e}: too few successful attacks to select neurons on one half and patch "
            "the other, or no exploited neuron selected."
        )
    n, rec, null, noi = r["n_neurons"], r["recovery"], r["null_stats"], r["noising"]
    these = "this neuron" if n == 1 else f"these {n} neurons"
    return (
        f"Patching the {_plural(n, 'exploited neuron')} (all layers; selected on other images) in "
        f"{_plural(int(rec[0]), 'held-out attacked image')} at {e} recovers {_pct(rec[1])} of the logit gap; "
        f"random sets of {n} recover {_pct(null[0])} (percentile {math.floor(null[4] + 0.5)}: {_verdict(null[4])}). "
        f"Put into the clean images, the attacked values of {these} close {_pct(noi[0])} of the gap; random sets "
        f"{_pct(noi[1])} (percentile {math.floor(noi[3] + 0.5)}: {_verdict(noi[3])})."
    )


def check_causal_table(page, rows: list[dict], s: int) -> None:
    """The table's numbers are the stored exploited rows at strength s: R, null mean, percentile, matched."""
    got = page.eval_on_selector_all(
        "#causal-table tbody tr",
        """trs => trs.map(tr => [tr.dataset.layer,
        ...['exploited', 'null', 'percentile', 'matched'].map(c => Number(tr.querySelector('.causal-cell.' + c).dataset.value))])""",
    )
    want = [r for r in rows if r["strength"] == s - 1 and r["set"] == "exploited"]
    assert [g[0] for g in got] == [r["layer"] for r in want] and want
    for g, r in zip(got, want):
        for value, stored in zip(g[1:], (r["recovery"][1], r["null_stats"][0], r["null_stats"][4], r["matched"][0])):
            assert (value == pytest.approx(stored, rel=1e-6)) if _fin(stored) else math.isnan(value)


def check_causal_curve(page, curves: list[dict], eps: list[float], s: int) -> None:
    """The drawn dose-response points of the selected layer are the stored causal_curve values at the
    shown strength s, or, where none is stored there, at the nearest stored strength (said so)."""
    layer = page.input_value("#causal-curve-layer")
    stored = sorted({c["strength"] for c in curves})
    at = s - 1 if s - 1 in stored else min(stored, key=lambda x: (abs(x - (s - 1)), x))
    cap = page.text_content(".causal-curve-caption")
    assert page.get_attribute(".causal-curve-caption", "data-strength") == str(at)
    assert f"at eps {eps[at]:.2f}" in cap and (("only at" in cap) == (at != s - 1)), cap
    want = {c["order"]: c for c in curves if c["layer"] == layer and c["strength"] == at}
    assert set(want) == {"exploited", "delta", "random"}
    for order, c in want.items():
        pts = page.eval_on_selector_all(
            f"#causal-curve g.curve[data-order='{order}'] circle",
            "cs => cs.map(c => [Number(c.dataset.k), Number(c.dataset.r)])",
        )
        assert [p[0] for p in pts] == c["k"]
        np.testing.assert_allclose([p[1] for p in pts], c["recovery"], rtol=1e-6)


def read_curves(root, o: int, t: int) -> list[dict]:
    from viewer_synth import read_pair as _rp

    row = _rp(root, o, t)[0]
    f = pq.ParquetFile(Path(root) / layout.part_path("causal_curve", o, row["part"]))
    return f.read_row_group(row["row_group"]).to_pylist()


def sentences(page) -> list[str]:
    return page.eval_on_selector_all("#causal-text p.causal-sentence", "ps => ps.map(p => p.textContent)")


def test_causal_panel_matches_the_stored_rows(page, serve_root, synth_results):
    """The sentence, the table and the dose-response curve say what the stored numbers say."""
    from viewer_synth import read_causal

    eps = manifest(synth_results)["strengths"]
    o, t = next(
        (o, t)
        for o, t in all_pairs(synth_results)
        if read_pair(synth_results, o, t)[0]["n_success"][0] == 0 and read_curves(synth_results, o, t)
    )
    pair = read_pair(synth_results, o, t)[0]
    rows, curves = read_causal(synth_results, o, t), read_curves(synth_results, o, t)
    url = serve_root(synth_results)
    page.goto(f"{url}?original={o}&target={t}&eps={eps[5]}")
    wait_ready(page, f"{o}-{t}")
    page.wait_for_selector("#causal-panel[data-state='ready']")
    for s in (6, 9):
        if s != 6:
            page.eval_on_selector("#strength", f"el => {{ el.value = '{s}'; el.dispatchEvent(new Event('input')); }}")
        assert sentences(page) == [expected_causal_sentence(rows, pair, eps, s)]
        if _row(rows, "all", s - 1):
            check_causal_table(page, rows, s)
    assert "NaN" not in page.text_content("#causal-panel")
    check_causal_curve(page, curves, eps, 9)
    other = [c["layer"] for c in curves if c["layer"] != page.input_value("#causal-curve-layer")]
    if other:
        page.select_option("#causal-curve-layer", other[0])
        check_causal_curve(page, curves, eps, 9)
    shot(page, "causal-panel")
    # no successful attack at the strength: said, no table
    page.eval_on_selector("#strength", "el => { el.value = '1'; el.dispatchEvent(new Event('input')); }")
    assert sentences(page) == [f"No attack succeeded at eps {eps[0]:.2f}: there is nothing to patch."]
    assert page.is_hidden("#causal-table")
    page.keyboard.press("ArrowLeft")
    assert page.input_value("#strength") == "0"
    assert sentences(page) == [expected_causal_sentence(rows, pair, eps, 0)]
    # a pair with curves at several strengths (pathways.curves "every"): the shown strength's curve
    o2, t2 = next(
        (o, t)
        for o, t in all_pairs(synth_results)
        if len({c["strength"] for c in read_curves(synth_results, o, t)}) >= 2
    )
    curves2 = read_curves(synth_results, o2, t2)
    have = sorted({c["strength"] for c in curves2})
    page.goto(f"{url}?original={o2}&target={t2}&eps={eps[have[0]]}")
    wait_ready(page, f"{o2}-{t2}")
    page.wait_for_selector("#causal-panel[data-state='ready']")
    for i in (have[0], have[-1]):
        page.eval_on_selector("#strength", f"el => {{ el.value = '{i + 1}'; el.dispatchEvent(new Event('input')); }}")
        check_causal_curve(page, curves2, eps, i + 1)


def test_causal_panel_hidden_without_patching(page, serve_root, synth_results, tmp_path):
    # a run without activation patching (manifest causal: false)
    root = make_results(tmp_path / "nocausal", seed=5, classes=3, causal=False)
    url = serve_root(root)
    page.goto(f"{url}?original=0&target=1&eps=0.3")
    wait_ready(page, "0-1")
    page.wait_for_selector("#causal-panel[data-state='off']")
    assert "not run" in page.text_content("#causal-note") and page.is_hidden("#causal-body")
    assert page.is_hidden("#effect-controls")
    ex = page.eval_on_selector_all("g.node[data-role='exploited']", "gs => gs.map(g => g.dataset.id)")
    page.hover(f"g.node[data-id='{ex[0]}']")
    page.wait_for_selector(f"#detail[data-id='{ex[0]}']")
    assert page.locator("#detail .effect").count() == 0
    # a root whose causal files are missing
    broken = tmp_path / "nofiles"
    shutil.copytree(synth_results, broken)
    shutil.rmtree(broken / "causal")
    url = serve_root(broken)
    page.goto(f"{url}?original=2&target=3")
    wait_ready(page, "2-3")
    page.wait_for_selector("#causal-panel[data-state='missing']")
    note = page.text_content("#causal-note")
    assert "No activation-patching results" in note and "causal/original=2/part-0.parquet" in note
    assert page.is_hidden("#error")  # the graph is fine


def ring_state(page) -> dict:
    return {
        g["id"]: g
        for g in page.eval_on_selector_all(
            "g.node",
            """gs => gs.map(g => { const r = g.querySelector('rect.effect-ring');
        return {id: g.dataset.id, role: g.dataset.role, effect: g.dataset.effect === undefined ? null : Number(g.dataset.effect),
                ring: g.dataset.ring === undefined ? null : Number(g.dataset.ring), shown: r.getAttribute('display') !== 'none',
                sw: Number(r.getAttribute('stroke-width')), w: Number(r.getAttribute('width')),
                size: Number(g.querySelector('rect.outer').getAttribute('width'))}; })""",
        )
    }


def check_rings(page, nodes: list[dict], s: int, on: bool) -> None:
    st = ring_state(page)
    ring_max = float(page.get_attribute("svg#graph", "data-ring-max"))
    for n in nodes:
        g = st[node_id(n)]
        assert ring_max == pytest.approx(0.45 * g["size"])
        if n["role"] != "exploited":
            assert g["effect"] is None and g["ring"] is None and not g["shown"]
            continue
        eff = n["effect"][s - 1] if s >= 1 else math.nan
        if _fin(eff):
            assert g["effect"] == pytest.approx(eff, rel=1e-6)
        else:
            assert math.isnan(g["effect"])
        want = min(1.0, eff) * ring_max if on and _fin(eff) and eff > 0 else 0.0  # capped: R can exceed 1
        if on:
            assert g["ring"] == pytest.approx(want, rel=1e-5, abs=1e-9)  # proportional to the neuron's effect
        else:
            assert g["ring"] is None
        assert g["shown"] == (want > 0)
        if want > 0:
            assert g["sw"] == pytest.approx(want, rel=1e-5) and g["w"] == pytest.approx(g["size"] - want, rel=1e-5)


def test_neuron_effect_detail_and_rings(page, serve_root, synth_results):
    o, t = 2, 3
    eps = manifest(synth_results)["strengths"]
    row, nodes, _ = read_pair(synth_results, o, t)
    url = serve_root(synth_results)
    page.goto(f"{url}?original={o}&target={t}&eps={eps[5]}")
    wait_ready(page, f"{o}-{t}")
    s = 6
    # hover an exploited neuron: its own effect at the strength, and over strengths
    ex = next(n for n in nodes if n["role"] == "exploited" and _fin(n["effect"][s - 1]))
    page.hover(f"g.node[data-id='{node_id(ex)}']")
    page.wait_for_selector(f"#detail[data-id='{node_id(ex)}'] .effect")
    assert float(page.get_attribute("#detail .effect", "data-value")) == pytest.approx(ex["effect"][s - 1], rel=1e-6)
    assert page.text_content("#detail .effect-text") == (
        f"Patching it alone recovers {_pct(ex['effect'][s - 1])} of the logit gap at eps {eps[s - 1]:.2f} (held-out images)."
    )
    bars = page.eval_on_selector_all(
        "#detail rect.effect-bar", "rs => rs.map(r => [Number(r.dataset.strength), Number(r.dataset.value)])"
    )
    want = [(i + 1, v) for i, v in enumerate(ex["effect"]) if _fin(v)]
    assert [b[0] for b in bars] == [w[0] for w in want]
    assert [b[1] for b in bars] == pytest.approx([w[1] for w in want], rel=1e-6)
    assert page.locator("#detail rect.effect-bar.current").count() == 1
    shot(page, "effect-detail")
    # a non-exploited neuron shows no effect
    other = next(n for n in nodes if n["role"] != "exploited")
    page.hover(f"g.node[data-id='{node_id(other)}']")
    page.wait_for_selector(f"#detail[data-id='{node_id(other)}']")
    assert page.locator("#detail .effect").count() == 0
    # an exploited neuron at a strength without success: said, no number
    page.mouse.move(5, 5)
    page.eval_on_selector("#strength", "el => { el.value = '1'; el.dispatchEvent(new Event('input')); }")
    if row["n_success"][0] == 0:
        page.hover(f"g.node[data-id='{node_id(ex)}']")
        page.wait_for_selector(f"#detail[data-id='{node_id(ex)}'] .effect")
        assert page.text_content("#detail .effect-text") == f"Causal effect: no successful attack at eps {eps[0]:.2f}."
        page.mouse.move(5, 5)
    page.eval_on_selector("#strength", f"el => {{ el.value = '{s}'; el.dispatchEvent(new Event('input')); }}")

    # the toggle: rings inside the exploited neurons, thickness proportional to their effect
    check_rings(page, nodes, s, on=False)
    page.check("#effect-rings")
    check_rings(page, nodes, s, on=True)
    assert sum(1 for g in ring_state(page).values() if g["shown"]) > 3
    assert parse_qs(urlsplit(page.url).query)["rings"] == ["effect"]
    shot(page, "effect-rings")
    # another strength: the rings follow it
    page.eval_on_selector("#strength", "el => { el.value = '9'; el.dispatchEvent(new Event('input')); }")
    check_rings(page, nodes, 9, on=True)
    # URL round trip
    before = ring_state(page)
    page.goto(page.url)
    wait_ready(page, f"{o}-{t}")
    assert page.is_checked("#effect-rings")
    assert ring_state(page) == before
    # compare mode: the stronger strength's effect
    page.check("#compare")
    check_rings(page, nodes, int(page.input_value("#stronger")), on=True)
    # the toggle off: no rings, not in the URL
    page.uncheck("#effect-rings")
    check_rings(page, nodes, int(page.input_value("#stronger")), on=False)
    assert "rings" not in parse_qs(urlsplit(page.url).query)


# --- neuron atlas ----------------------------------------------------------------------------------------------------


def atlas_rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#atlas-table tbody tr",
        """trs => trs.map(t => ({id: t.dataset.id, any: Number(t.dataset.any),
        at: Number(t.dataset.at), effect: Number(t.dataset.effect), displayed: Number(t.dataset.displayed),
        cells: [...t.querySelectorAll('td')].map(td => td.textContent)}))""",
    )


def expected_atlas_order(root, key: str, i: int, desc: bool, where: str = "true") -> list[str]:
    """The atlas's neuron order from DuckDB: value descending then file row; ascending = the finite
    values reversed (ties too); NaN last in file order."""
    v = {
        "any": "n_exploited_any",
        "at": f"n_exploited[{i + 1}]",
        "effect": "mean_recovery",
        "displayed": "n_displayed",
    }[key]
    src = (
        f"(select layer || '-' || channel as id, cast({v} as double) as v, file_row_number as r "
        f"from read_parquet('{root}/atlas/neurons.parquet', file_row_number = true) where {where})"
    )
    order = "v desc, r" if desc else "v asc, r desc"
    con = duckdb.connect()
    valid = con.execute(f"select id from {src} where isfinite(v) order by {order}").fetchall()
    nan = con.execute(f"select id from {src} where v is null or not isfinite(v) order by r").fetchall()
    return [x[0] for x in valid + nan]


def atlas_wait(page, tab: str = "neurons") -> None:
    page.wait_for_selector(f"#atlas[data-state='ready'][data-tab='{tab}']")


def test_atlas_at_1000_classes(page, serve_root, scale_results):
    """Opening the atlas reads atlas/neurons.parquet only (the thumbnails' index afterwards); its
    sorts match DuckDB; the class view reads the class statistics columns of classes.parquet."""
    url = serve_root(scale_results)
    page.goto(url)
    wait_ready(page)
    page.wait_for_selector("#causal-panel[data-state='ready']")  # the pair's last read
    n0 = page.evaluate("window.__bluff.traffic.log.length")
    page.keyboard.press("a")
    atlas_wait(page)
    assert page.input_value("#atlas-search") == ""  # the key did not type into the search box
    page.wait_for_timeout(200)  # the thumbnails' index (absent in this root: no assets)
    log = page.evaluate("window.__bluff.traffic.log")[n0:]
    files = {e["file"] for e in log}
    assert files <= {"atlas/neurons.parquet", "neurons/index.parquet"} and "atlas/neurons.parquet" in files
    atlas_bytes = sum(e["bytes"] for e in log if e["file"] == "atlas/neurons.parquet")
    size = (Path(scale_results) / "atlas/neurons.parquet").stat().st_size
    assert atlas_bytes <= size and atlas_bytes < 64 * 1024  # one row per neuron (256 here), whatever the 999,000 pairs
    n = pq.ParquetFile(f"{scale_results}/atlas/neurons.parquet").metadata.num_rows
    assert page.get_attribute("#atlas", "data-total") == str(n)
    assert page.locator("#atlas-table tbody tr").count() == 50  # a page, not every neuron
    # the default order: the measured effect alone (mean recovery), not how often a neuron is labelled exploited
    assert [r["id"] for r in atlas_rows(page)] == expected_atlas_order(scale_results, "effect", 0, True)[:50]
    # sort by pairs exploiting at a strength: the same top neurons as DuckDB, both directions, page 2
    page.select_option("#atlas-strength", "6")
    page.click("#atlas-table th[data-key=at]")
    atlas_wait(page)
    want = expected_atlas_order(scale_results, "at", 6, True)
    got = atlas_rows(page)
    assert [r["id"] for r in got] == want[:50]
    con = duckdb.connect()
    counts = dict(
        con.execute(
            f"select layer || '-' || channel, n_exploited[7] from read_parquet('{scale_results}/atlas/neurons.parquet')"
        ).fetchall()
    )
    assert all(r["at"] == counts[r["id"]] for r in got) and got[0]["at"] > 0
    page.click("#atlas-next")
    atlas_wait(page)
    assert [r["id"] for r in atlas_rows(page)] == want[50:100]
    page.click("#atlas-table th[data-key=at]")  # ascending
    atlas_wait(page)
    assert [r["id"] for r in atlas_rows(page)] == expected_atlas_order(scale_results, "at", 6, False)[:50]
    page.click("#atlas-table th[data-key=effect]")
    atlas_wait(page)
    assert [r["id"] for r in atlas_rows(page)] == expected_atlas_order(scale_results, "effect", 6, True)[:50]
    page.click("#atlas-table th[data-key=displayed]")
    atlas_wait(page)
    assert [r["id"] for r in atlas_rows(page)] == expected_atlas_order(scale_results, "displayed", 6, True)[:50]
    assert page.locator("#atlas-table tbody tr").count() <= 50
    shot(page, "atlas-1000")
    # the class view: the class statistics columns, a page of the 1000 classes
    n1 = page.evaluate("window.__bluff.traffic.log.length")
    page.click("#atlas-tab-classes")
    atlas_wait(page, "classes")
    log2 = page.evaluate("window.__bluff.traffic.log")[n1:]
    assert {e["file"] for e in log2} == {"classes.parquet"}
    class_bytes = sum(e["bytes"] for e in log2)
    assert page.locator("#atlas-class-table tbody tr").count() == 50
    t = pq.read_table(
        f"{scale_results}/classes.parquet", columns=["class_id", "success_as_original", "success_as_target"]
    ).to_pylist()

    def order(col, desc):
        valid = [(r[col][6], r["class_id"]) for r in t if _fin(r[col][6])]
        valid.sort(key=lambda x: (-x[0], x[1]))
        if not desc:
            valid.reverse()
        return [c for _, c in valid] + [r["class_id"] for r in t if not _fin(r[col][6])]

    got = page.eval_on_selector_all(
        "#atlas-class-table tbody tr",
        "trs => trs.map(t => [Number(t.dataset.class), Number(t.dataset.original), Number(t.dataset.target)])",
    )
    assert [g[0] for g in got] == order("success_as_original", True)[:50]
    for c, so, st in got:
        assert so == pytest.approx(t[c]["success_as_original"][6], rel=1e-6) and st == pytest.approx(
            t[c]["success_as_target"][6], rel=1e-6
        )
    page.click("#atlas-class-table th[data-key=target]")
    atlas_wait(page, "classes")
    got = page.eval_on_selector_all("#atlas-class-table tbody tr", "trs => trs.map(t => Number(t.dataset.class))")
    assert got == order("success_as_target", True)[:50]
    page.click("#atlas-class-table th[data-key=original]")
    page.click("#atlas-class-table th[data-key=original]")  # ascending: the hardest classes to attack, then NaN
    atlas_wait(page, "classes")
    page.click("#atlas-class-last")
    atlas_wait(page, "classes")
    got = page.eval_on_selector_all("#atlas-class-table tbody tr", "trs => trs.map(t => Number(t.dataset.class))")
    assert got == order("success_as_original", False)[950:]
    assert got[-1] == 7  # the class the model never classifies correctly: no rate, last
    print(
        f"atlas at 1000 classes: atlas/neurons.parquet {atlas_bytes} bytes ({n} neurons), "
        f"class statistics {class_bytes} bytes, load {page.get_attribute('#atlas', 'data-load-ms')} ms"
    )
    assert class_bytes < 150 * 1024
    # the class view links the explorer: pairs into the first class (by success)
    page.click("#atlas-class-table th[data-key=target]")
    atlas_wait(page, "classes")
    c = order("success_as_target", True)[0]
    page.click(f"#atlas-class-table tr[data-class='{c}'] td.target button")
    page.wait_for_selector("#explorer:not([hidden])")
    assert page.is_hidden("#atlas")
    explorer_wait(page)
    assert page.get_attribute("#explorer-target", "data-value") == str(c)
    assert explorer_rows(page) == [tuple(x) for x in expected_by_overview(scale_results, 6, c, True)][:50]


def test_atlas_search_detail_and_links(page, serve_root, synth_results):
    url = serve_root(synth_results)
    names = names_of(synth_results)
    page.goto(f"{url}?original=2&target=3")
    wait_ready(page, "2-3")
    page.click("#open-atlas")
    atlas_wait(page)
    con = duckdb.connect()
    atlas = con.execute(
        f"select layer || '-' || channel as id, top_originals, top_targets, n_exploited_any "
        f"from read_parquet('{synth_results}/atlas/neurons.parquet')"
    ).fetchall()
    # search by neuron id: that neuron first (an exact id), by a prefix: every match
    nid = next(a[0] for a in atlas if a[3] > 0 and a[0].endswith("-1"))
    page.fill("#atlas-search", nid)
    atlas_wait(page)
    rows = atlas_rows(page)
    assert rows[0]["id"] == nid and all(nid in r["id"] for r in rows)
    assert {r["id"] for r in rows} == {a[0] for a in atlas if nid in a[0]}
    # by class name: the neurons with that class among their top originals or targets (names as text)
    q = names[2]
    page.fill("#atlas-search", q)
    atlas_wait(page)
    want = {a[0] for a in atlas if any(q.lower() in names[c].lower() for c in [*a[1], *a[2]])}
    got = atlas_rows(page)
    assert want and {r["id"] for r in got} == want if len(want) <= 50 else len(got) == 50
    assert int(page.get_attribute("#atlas", "data-total")) == len(want)
    assert page.locator("#atlas-table b").count() == 0  # "<b>two</b> & co" is text
    # keyboard: Enter on a row opens its detail (pictures, per-strength counts, class links)
    page.fill("#atlas-search", "")
    atlas_wait(page)
    top = atlas_rows(page)[0]
    page.focus(f"#atlas-table tr[data-id='{top['id']}']")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#atlas-detail[data-id='{top['id']}']")
    page.wait_for_function(
        "() => { const i = document.querySelector('#atlas-detail img.atlas-fv'); return i && i.complete && i.naturalWidth > 0; }"
    )
    a = next(x for x in atlas if x[0] == top["id"])
    assert (
        page.eval_on_selector_all(
            "#atlas-detail .atlas-links.original .class-link", "bs => bs.map(b => Number(b.dataset.class))"
        )
        == a[1]
    )
    assert (
        page.eval_on_selector_all(
            "#atlas-detail .atlas-links.target .class-link", "bs => bs.map(b => Number(b.dataset.class))"
        )
        == a[2]
    )
    assert page.locator("#atlas-table tbody tr img.thumb").count() > 0  # thumbnails, lazily
    shot(page, "atlas-detail")
    # the top pair (when computed) opens in the graph
    btn = page.locator("#atlas-open-pair")
    btn.wait_for()
    o, t = int(btn.get_attribute("data-original")), int(btn.get_attribute("data-target"))
    assert (o, t) in set(all_pairs(synth_results)) and o == a[1][0]
    btn.click()
    wait_ready(page, f"{o}-{t}")
    assert page.is_hidden("#atlas")
    # a class link filters the pair explorer to that original
    page.keyboard.press("a")
    atlas_wait(page)
    page.wait_for_selector(f"#atlas-detail[data-id='{top['id']}']")  # the detail stays open
    c = a[1][0]
    page.click(f"#atlas-detail .atlas-links.original .class-link[data-class='{c}']")
    explorer_wait(page)
    assert page.is_hidden("#atlas") and page.get_attribute("#explorer-original", "data-value") == str(c)
    assert explorer_rows(page) == expected_order(synth_results, "exploited", 0, True, f"original = {c}")
    page.keyboard.press("Escape")
    # Esc closes the detail, then the atlas
    page.keyboard.press("a")
    atlas_wait(page)
    page.keyboard.press("Escape")
    assert page.is_hidden("#atlas-detail") and page.is_visible("#atlas")
    page.keyboard.press("Escape")
    assert page.is_hidden("#atlas")


@pytest.mark.pipeline
def test_atlas_counts_equal_the_nodes_files(page, serve_root, demo_results):
    """On the real pipeline's root: n_exploited[i] is the count of nodes rows with exploited_mask bit
    i set (DuckDB over nodes/), and the atlas shows those counts in that order."""
    con = duckdb.connect()
    S = len(manifest(demo_results)["strengths"])
    i = S // 2
    counts = dict(
        con.execute(
            f"select layer || '-' || channel, count(*) from read_parquet('{demo_results}/nodes/*/*.parquet', hive_partitioning = true) "
            f"where (exploited_mask >> {i}) & 1 = 1 group by all"
        ).fetchall()
    )
    assert counts
    url = serve_root(demo_results)
    page.goto(url)
    wait_ready(page)
    page.keyboard.press("a")
    atlas_wait(page)
    page.select_option("#atlas-strength", str(i))
    page.click("#atlas-table th[data-key=at]")
    atlas_wait(page)
    rows = atlas_rows(page)
    assert [r["id"] for r in rows] == expected_atlas_order(demo_results, "at", i, True)[:50]
    for r in rows:
        assert r["at"] == counts.get(r["id"], 0), r["id"]
    assert rows[0]["at"] == max(counts.values())
    shot(page, "atlas-pipeline")


@pytest.mark.pipeline
def test_causal_panel_on_pipeline_results(page, serve_root, demo_results):
    """The real pipeline's causal rows: the sentence and the bars of a pair at two strengths."""
    from viewer_synth import read_causal

    eps = manifest(demo_results)["strengths"]
    o, t = max(all_pairs(demo_results), key=lambda p: read_pair(demo_results, *p)[0]["n_exploited"])
    pair = read_pair(demo_results, o, t)[0]
    rows = read_causal(demo_results, o, t)
    url = serve_root(demo_results)
    page.goto(f"{url}?original={o}&target={t}&eps={eps[-1]}")
    wait_ready(page, f"{o}-{t}")
    page.wait_for_selector("#causal-panel[data-state='ready']")
    for s in (len(eps), len(eps) // 2):
        page.eval_on_selector("#strength", f"el => {{ el.value = '{s}'; el.dispatchEvent(new Event('input')); }}")
        assert sentences(page) == [expected_causal_sentence(rows, pair, eps, s)]
        if _row(rows, "all", s - 1):
            check_causal_table(page, rows, s)
    check_causal_curve(page, read_curves(demo_results, o, t), eps, len(eps) // 2)
    shot(page, "causal-pipeline")


def _chunks_outside_tail(path: Path, rg: int, columns: set[str] | None, tail: int) -> int:
    """Bytes of row group ``rg``'s column chunks (only ``columns``, or all) that lie before the
    file's last ``tail`` bytes, i.e. what a reader needs beyond its footer read."""
    size = path.stat().st_size
    md = pq.ParquetFile(path).metadata.row_group(rg)
    total = 0
    for i in range(md.num_columns):
        c = md.column(i)
        if columns is not None and c.path_in_schema not in columns:
            continue
        lo = c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset
        total += max(0, min(lo + c.total_compressed_size, size - tail) - lo)
    return total


def test_first_graph_reads_only_the_shown_strength_then_the_rest(page, serve_root, synth_results):
    """Schema 3 edges hold one influence column per condition: the first graph reads the keys and
    three of them (original, target, the strength shown), the other strengths follow after drawing
    (data-state 'partial' until then), and the graph then matches the stored edges at any strength."""
    o, t = 2, 0  # row group 0: its columns lie before the edges file's 32 KiB suffix read
    row, nodes, edges = read_pair(synth_results, o, t)
    strengths = manifest(synth_results)["strengths"]
    s = 3  # viewer strength index (1-based; 0 is benign)
    url = serve_root(synth_results)
    page.goto(f"{url}?original={o}&target={t}&eps={strengths[s - 1]}")
    wait_ready(page, f"{o}-{t}")
    rel = f"edges/original={o}/part-{row['part']}.parquet"
    path = Path(synth_results) / rel
    tail = min(layout.EDGES_TAIL_BYTES, path.stat().st_size)
    keys = {"target", "src_layer", "src_channel", "dst_layer", "dst_channel", "influence_target"}
    first = page.evaluate("window.__bluff.firstGraphBytes")[rel]
    # hyparquet reads the needed column chunks as one range: up to the shown strength's column
    # (columns are in order: keys, original, target, then each strength), never those after it
    names = pq.ParquetFile(path).schema_arrow.names
    upto = set(names[: names.index(layout.influence_column(s - 1)) + 1])
    want_first = tail + _chunks_outside_tail(path, row["row_group"], upto, tail)
    full = tail + _chunks_outside_tail(path, row["row_group"], None, tail)
    assert tail + _chunks_outside_tail(path, row["row_group"], keys | {"influence_original"}, tail) < first
    assert first <= want_first < full and full - first > 0.5 * (full - tail), (first, want_first, full)
    after = page.evaluate("window.__bluff.traffic.byFile")[rel]
    # the rest: the other strengths' columns (a range read may repeat some of the first read's columns)
    assert full <= after <= full + (want_first - tail), (after, full, want_first)
    assert page.get_attribute("svg#graph", "data-state") == "ready"
    assert int(page.input_value("#strength")) == s
    check_graph(page, nodes, edges, s)  # widths over every condition: the same as drawn at once
    # every strength's connections are there now, as stored, without another request
    page.focus("#strength")
    page.keyboard.press("Home")
    check_graph(page, nodes, edges, 0)
    page.keyboard.press("End")
    check_graph(page, nodes, edges, len(strengths))
    assert page.evaluate("window.__bluff.traffic.byFile")[rel] == after
