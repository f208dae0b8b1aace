"""Viewer benchmark: bytes fetched and time to first graph for one pair, in headless Chromium.

Two sources side by side in one run: `bluff serve` (local HTTP with ranges) and the same results
published with `bluff publish` to a moto S3 server on 127.0.0.1. Each load uses a fresh browser
context (empty cache); the table reports medians over --loads loads.

    .venv/bin/python bench/viewer.py --results ./bluff-results            # a real results root
    .venv/bin/python bench/viewer.py --synthetic 100                      # 100 classes, 99 row groups per file

"Time to first graph" is performance.now() when the first pair's graph is drawn (from navigation
start: page, script, manifest, classes, pair index, footers and the pair's row groups). On
127.0.0.1 it measures the viewer's own work and request count, not network latency.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_pair(root: Path, original: int | None, target: int | None) -> tuple[int, int]:
    import pyarrow.parquet as pq

    rows = pq.read_table(root / "pair_index.parquet").to_pylist()
    if original is not None and target is not None:
        return original, target
    mid = sorted(rows, key=lambda r: (r["original"], r["target"]))[len(rows) // 2]
    return mid["original"], mid["target"]


def load_once(browser, url: str, pair: tuple[int, int]) -> dict:
    o, t = pair
    ctx = browser.new_context(viewport={"width": 1400, "height": 860})
    page = ctx.new_page()
    sep = "&" if "?" in url else "?"
    page.goto(f"{url}{sep}original={o}&target={t}")
    page.wait_for_selector(f"svg#graph[data-pair='{o}-{t}'][data-state='ready']", timeout=60000)
    dbg = page.evaluate("({t: window.__bluff.firstGraphMs, b: window.__bluff.traffic.bytes, "
                        "n: window.__bluff.traffic.requests, f: window.__bluff.traffic.byFile})")
    pair_bytes = sum(v for k, v in dbg["f"].items() if k.startswith((f"nodes/original={o}/", f"edges/original={o}/")))
    assert pair_bytes > 0, "the viewer fetched no nodes/edges bytes for the pair"
    ctx.close()
    return {"ms": dbg["t"], "bytes": dbg["b"], "requests": dbg["n"], "pair_bytes": pair_bytes}


def run(root: Path, loads: int, pair: tuple[int, int]) -> list[dict]:
    from playwright.sync_api import sync_playwright

    from bluff_ray.publish import publish
    from bluff_ray.serve import start_server

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench-key")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    moto.start()
    endpoint = "http://%s:%d" % moto.get_host_and_port()
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bluff-bench")
    report = publish(str(root), "s3://bluff-bench/run", storage_options={"endpoint_url": endpoint}, quiet=True)
    server, local_url = start_server(root)
    results = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu"],
            )
            load_once(browser, local_url, pair)  # warm-up (disk cache of the OS, JIT)
            for name, url in (("bluff serve (127.0.0.1)", local_url), ("moto S3 (127.0.0.1)", report.viewer_url)):
                runs = [load_once(browser, url, pair) for _ in range(loads)]
                results.append({"source": name, **{k: statistics.median(r[k] for r in runs) for k in runs[0]}})
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
        moto.stop()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--results", type=Path, help="a local results root")
    g.add_argument("--synthetic", type=int, metavar="CLASSES", help="generate a synthetic root with this many classes")
    ap.add_argument("--loads", type=int, default=5, help="page loads per source (median reported)")
    ap.add_argument("--original", type=int)
    ap.add_argument("--target", type=int)
    args = ap.parse_args(argv)
    tmp = None
    if args.synthetic:
        sys.path.insert(0, str(REPO / "tests" / "viewer"))
        from viewer_synth import make_results

        tmp = tempfile.TemporaryDirectory()
        root = make_results(Path(tmp.name) / "root", seed=0, classes=args.synthetic, assets=False)
    else:
        root = args.results
    if not (root / "manifest.json").is_file():
        ap.error(f"{root} is not a results root (no manifest.json)")
    pair = pick_pair(root, args.original, args.target)
    import pyarrow.parquet as pq

    o = pair[0]
    part = next(r.get("part", 0) for r in pq.read_table(root / "pair_index.parquet").to_pylist()
                if (r["original"], r["target"]) == pair)
    file_bytes = sum((root / d / f"original={o}" / f"part-{part}.parquet").stat().st_size for d in ("nodes", "edges"))
    rg = json.loads((root / "manifest.json").read_text())
    res = run(root, args.loads, pair)
    label = f"synthetic, {args.synthetic} classes" if args.synthetic else str(args.results)
    print(f"\nresults: {label}; pair {pair[0]} -> {pair[1]}; strengths {len(rg['strengths'])}; "
          f"the pair's nodes+edges files (part-{part}): {file_bytes / 1024:.1f} KiB; {args.loads} loads per source\n")
    print("| source | time to first graph (ms, median) | requests | bytes fetched, all data | bytes fetched, the pair (nodes+edges) | pair bytes / whole files |")
    print("|---|---|---|---|---|---|")
    for r in res:
        print(f"| {r['source']} | {r['ms']:.0f} | {r['requests']:.0f} | {r['bytes'] / 1024:.1f} KiB | "
              f"{r['pair_bytes'] / 1024:.1f} KiB | {r['pair_bytes'] / file_bytes:.2f} |")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
