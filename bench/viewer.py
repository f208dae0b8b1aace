"""Viewer benchmark: startup and one-pair bytes and times, pair explorer, class overview and neuron
atlas, in headless Chromium, on a results root of schema version 2.

    .venv/bin/python bench/viewer.py --synthetic 1000              # 1000 classes, 999,000 pairs (~15 s to build)
    .venv/bin/python bench/viewer.py --results ./bluff-results     # a real results root
    .venv/bin/python bench/viewer.py --synthetic 1000 --s3         # also through bluff publish + a moto S3 server

Each load opens the viewer without URL state (the manifest's landing pair) in a fresh browser
context (empty cache), waits for the graph, then opens the pair explorer (first page, then the
reversed sort), the class overview and the neuron atlas (neurons, then the class view). The table
reports medians over --loads loads.

- startup: bytes of manifest.json, classes.parquet and the landing original's pair_index
  partition, i.e. everything but the pair's own files; pair: bytes of the pair's nodes/edges
  files (footer suffix + its row groups); first graph: performance.now() when the graph is drawn
  (from navigation start: page, script, manifest, classes, partition, footers, row groups).
- explorer: ms from the click to the first page's rows (data-ms); bytes of the page's ranking rows
  plus the pair_index partitions read to fill in every row's exploited count (how many depends on
  how many originals the page holds, up to 50); reverse: ms to re-sort (ascending page).
- overview: ms from the click to the drawn heatmap, and its bytes (one row group).
- atlas: ms to read and decode atlas/neurons.parquet (data-load-ms) and its bytes; class view: the
  bytes of the class statistics columns of classes.parquet. (The synthetic roots have 4 x 64
  neurons; a GoogLeNet root has 5,488.)

On 127.0.0.1 the times measure the viewer's own work and request count plus the server's
per-request cost, not network latency.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_once(browser, url: str) -> dict:
    ctx = browser.new_context(viewport={"width": 1400, "height": 860})
    page = ctx.new_page()
    page.goto(url)
    page.wait_for_function("window.__bluff && window.__bluff.state !== 'loading'", timeout=60000)
    if page.evaluate("window.__bluff.state") != "ready":
        raise SystemExit(f"the viewer did not open a pair: {page.evaluate('window.__bluff.error')}")
    d = page.evaluate(
        "({t: window.__bluff.firstGraphMs, f: window.__bluff.firstGraphBytes, n: window.__bluff.traffic.requests})"
    )
    out = {
        "ms": d["t"],
        "requests": d["n"],
        "startup": sum(v for k, v in d["f"].items() if not k.startswith(("nodes/", "edges/"))),
        "pair": sum(v for k, v in d["f"].items() if k.startswith(("nodes/", "edges/"))),
        "files": sorted(d["f"]),
    }
    assert out["pair"] > 0, "the viewer fetched no nodes/edges bytes for the pair"
    ready = "['ready', 'filled'].includes(document.querySelector('#explorer').dataset.state)"
    n0 = page.evaluate("window.__bluff.traffic.log.length")
    page.click("#open-explorer")
    page.wait_for_function(ready)
    out["explorer_ms"] = int(page.get_attribute("#explorer", "data-ms"))
    page.wait_for_selector("#explorer[data-state='filled']", timeout=60000)
    key = f"rankings/success-{page.input_value('#explorer-strength')}.parquet"
    # the page's ranking rows and the partitions of its originals (not the other rankings' footers,
    # which are read in the background once the page is complete)
    out["explorer_bytes"] = sum(
        e["bytes"]
        for e in page.evaluate("window.__bluff.traffic.log")[n0:]
        if e["file"] == key or e["file"].startswith("pair_index/")
    )
    out["explorer_partitions"] = len(
        {e["file"] for e in page.evaluate("window.__bluff.traffic.log")[n0:] if e["file"].startswith("pair_index/")}
    )
    page.wait_for_timeout(300)  # the other rankings' footers, read in the background
    page.click("th[data-key=success]")
    page.wait_for_function(ready)
    out["reverse_ms"] = int(page.get_attribute("#explorer", "data-ms"))
    page.wait_for_selector("#explorer[data-state='filled']", timeout=60000)
    page.keyboard.press("Escape")
    b0 = page.evaluate("window.__bluff.traffic.bytes")
    page.click("#open-overview")
    page.wait_for_selector("#overview[data-state='ready']", timeout=60000)
    out["overview_ms"] = int(page.get_attribute("#overview", "data-ms"))
    out["overview_bytes"] = page.evaluate("window.__bluff.traffic.bytes") - b0
    page.keyboard.press("Escape")
    page.wait_for_timeout(200)  # the pair's causal rows, read after its graph
    n1 = page.evaluate("window.__bluff.traffic.log.length")
    page.keyboard.press("a")
    page.wait_for_selector("#atlas[data-state='ready']", timeout=60000)
    out["atlas_ms"] = int(page.get_attribute("#atlas", "data-load-ms"))
    out["atlas_bytes"] = sum(
        e["bytes"] for e in page.evaluate("window.__bluff.traffic.log")[n1:] if e["file"] == "atlas/neurons.parquet"
    )
    n2 = page.evaluate("window.__bluff.traffic.log.length")
    page.click("#atlas-tab-classes")
    page.wait_for_selector("#atlas[data-state='ready'][data-tab='classes']", timeout=60000)
    out["class_stats_bytes"] = sum(
        e["bytes"] for e in page.evaluate("window.__bluff.traffic.log")[n2:] if e["file"] == "classes.parquet"
    )
    ctx.close()
    return out


def run(root: Path, loads: int, s3: bool) -> list[dict]:
    from playwright.sync_api import sync_playwright

    from bluff_ray.web.serve import start_server

    sources = []
    server, local_url = start_server(root)
    sources.append(("bluff serve (127.0.0.1)", local_url))
    moto = None
    if s3:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench-key")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        import boto3
        from moto.server import ThreadedMotoServer

        from bluff_ray.web.publish import publish

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bluff-bench")
        report = publish(str(root), "s3://bluff-bench/run", storage_options={"endpoint_url": endpoint}, quiet=True)
        sources.append(("moto S3 (127.0.0.1)", report.viewer_url))
    results = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu"],
            )
            load_once(browser, local_url)  # warm-up (disk cache of the OS, JIT)
            for name, url in sources:
                runs = [load_once(browser, url) for _ in range(loads)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "files"}
                results.append({"source": name, "files": runs[0]["files"], **med})
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
        if moto:
            moto.stop()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--results", type=Path, help="a local results root (schema version 2)")
    g.add_argument(
        "--synthetic",
        type=int,
        metavar="CLASSES",
        help="generate a synthetic root with this many classes (all ordered pairs in the global files)",
    )
    ap.add_argument("--loads", type=int, default=5, help="page loads per source (median reported)")
    ap.add_argument(
        "--s3", action="store_true", help="also publish the root to a moto S3 server and load it from there"
    )
    args = ap.parse_args(argv)
    tmp = None
    if args.synthetic:
        sys.path.insert(0, str(REPO / "tests" / "viewer"))
        from viewer_synth import make_results

        tmp = tempfile.TemporaryDirectory()
        t0 = time.perf_counter()
        root = make_results(Path(tmp.name) / "root", seed=0, classes=args.synthetic, assets=False, with_files="landing")
        print(f"synthetic root built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    else:
        root = args.results
    if not (root / "manifest.json").is_file():
        ap.error(f"{root} is not a results root (no manifest.json)")
    import json

    m = json.loads((root / "manifest.json").read_text())
    res = run(root, args.loads, args.s3)
    label = f"synthetic, {args.synthetic} classes" if args.synthetic else str(args.results)
    land = m.get("landing")
    print(
        f"\nresults: {label}; {m.get('pairs_done', '?')} pairs; landing pair "
        f"{land and (land['original'], land['target'])}; {len(m['strengths'])} strengths; {args.loads} loads per source"
    )
    print("files read before the first graph: " + ", ".join(res[0]["files"]) + "\n")
    print(
        "| source | first graph (ms) | requests | startup bytes | pair bytes (nodes+edges) | explorer first page (ms) "
        "| explorer bytes: page + partitions read to fill it | explorer reverse sort (ms) | overview drawn (ms) | overview bytes "
        "| atlas read (ms) | atlas bytes | class statistics bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    kib = lambda b: f"{b / 1024:.1f} KiB"  # noqa: E731
    for r in res:
        print(
            f"| {r['source']} | {r['ms']:.0f} | {r['requests']:.0f} | {kib(r['startup'])} | {kib(r['pair'])} | "
            f"{r['explorer_ms']:.0f} | {kib(r['explorer_bytes'])} ({r['explorer_partitions']:.0f} partitions) | "
            f"{r['reverse_ms']:.0f} | {r['overview_ms']:.0f} | "
            f"{kib(r['overview_bytes'])} | {r['atlas_ms']:.0f} | {kib(r['atlas_bytes'])} | {kib(r['class_stats_bytes'])} |"
        )
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
