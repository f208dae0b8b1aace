"""Viewer memory benchmark: the bytes the open Parquet files keep while a person browses pairs.

    .venv/bin/python bench/viewer_cache.py --pairs 120 --budgets inf,64,4

Builds a synthetic 1,000-class root (tests/viewer/viewer_synth.py) whose nodes/edges/causal files hold
`--pairs` pairs spread over as many unit files as possible, serves it with `bluff serve`, and in
headless Chromium opens them one after the other through the original and target pickers (graph and
causal panel drawn each time), then goes back to the first 10. For each budget (MiB of
`window.__bluff.fileCache.budget`; inf = no bound, which is what the viewer kept before the budget:
every byte it had read) it reports the bytes held at the end, the most held, the files closed, and
the bytes fetched while browsing and while going back.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "viewer"))
CHROMIUM = "/usr/bin/chromium"


def pick(page, which: str, name: str) -> None:
    page.click(f"#pick-{which} .picker-button")
    page.fill(f"#pick-{which} input", name)
    page.locator(f"#pick-{which} ul").get_by_text(name, exact=True).click()


def open_pair(page, names: dict[int, str], o: int, t: int) -> None:
    if page.evaluate("new URLSearchParams(location.search).get('original')") != str(o):
        pick(page, "original", names[o])
        page.wait_for_selector("#pick-target:not([data-options='0'])")
    pick(page, "target", names[t])
    page.wait_for_selector(f"svg#graph[data-pair='{o}-{t}'][data-state='ready']", timeout=60000)
    page.wait_for_selector("#causal-panel[data-state='ready']", timeout=60000)


def fetched(page) -> int:
    return page.evaluate("window.__bluff.traffic.bytes")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=120)
    ap.add_argument("--budgets", default="inf,64,4", help="MiB, comma-separated; inf = no bound")
    args = ap.parse_args(argv)

    import pyarrow.parquet as pq
    from playwright.sync_api import sync_playwright

    from bluff_ray.web.serve import start_server
    from viewer_synth import make_results

    originals = 20
    per = -(-args.pairs // originals)
    pairs = []
    for o in range(originals):
        for j in range(per):
            t = (o * 37 + 1 + j * (1000 // per)) % 1000
            pairs.append((o, t if t != o else (t + 1) % 1000))
    pairs = pairs[: args.pairs]
    tmp = tempfile.TemporaryDirectory()
    t0 = time.time()
    root = make_results(Path(tmp.name) / "root", seed=5, classes=1000, assets=False, with_files=set(pairs))
    print(f"root built in {time.time() - t0:.0f} s", file=sys.stderr)
    names = {
        r["class_id"]: r["name"]
        for r in pq.read_table(f"{root}/classes.parquet", columns=["class_id", "name"]).to_pylist()
    }
    server, url = start_server(str(root))
    rows = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
            for b in args.budgets.split(","):
                budget = "Infinity" if b == "inf" else str(int(float(b) * 2**20))
                ctx = browser.new_context(viewport={"width": 1400, "height": 860})
                page = ctx.new_page()
                o, t = pairs[0]
                page.goto(f"{url}?original={o}&target={t}")
                page.wait_for_selector(f"svg#graph[data-pair='{o}-{t}'][data-state='ready']", timeout=60000)
                page.wait_for_selector("#causal-panel[data-state='ready']", timeout=60000)
                page.evaluate(f"window.__bluff.fileCache.budget = {budget}")
                for o, t in pairs[1:]:
                    open_pair(page, names, o, t)
                c = page.evaluate("({...window.__bluff.fileCache})")
                browse = fetched(page)
                for o, t in pairs[:10]:
                    open_pair(page, names, o, t)
                back = fetched(page) - browse
                c2 = page.evaluate("({...window.__bluff.fileCache})")
                rows.append((b, c["held"], max(c["peak"], c2["peak"]), c2["evictions"], browse, back))
                ctx.close()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    print(f"\n{len(pairs)} pairs ({len({o for o, _ in pairs})} originals), then the first 10 again\n")
    print(
        "| budget | held after browsing | most held | files closed | fetched browsing | fetched going back to 10 pairs |"
    )
    print("|---|---|---|---|---|---|")
    for b, held, peak, ev, browse, back in rows:
        label = "none (as before)" if b == "inf" else f"{b} MiB"
        print(f"| {label} | {mib(held)} | {mib(peak)} | {ev} | {mib(browse)} | {back / 1024:.0f} KiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
