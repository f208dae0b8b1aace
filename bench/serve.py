"""`bluff serve` request latency, side by side with another implementation of the same API.

    git show <commit>:bluff_ray/web/serve.py > /tmp/old_serve.py
    .venv/bin/python bench/serve.py --other /tmp/old_serve.py

Both servers serve the same results root in this process (one thread each). Measured per server:
- seq: median and p95 of one 16 KiB suffix read then one 30 KB range read of a 1 MB Parquet-sized
  file on one kept-alive connection (the viewer's pattern per file), --requests pairs;
- revalidate: median of a conditional GET (If-None-Match) answered 304;
- burst: wall time of --burst concurrent connections each reading one range (a page opening).
On 127.0.0.1 the times are the server's per-request cost plus the loopback, not network latency.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load(path: str):
    spec = importlib.util.spec_from_file_location("other_serve", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def measure(host: str, port: int, requests: int, burst: int) -> dict:
    path = "/results/nodes/part-0.parquet"
    conn = http.client.HTTPConnection(host, port, timeout=10)
    times = []
    for i in range(requests):
        t = time.perf_counter()
        for rng in ("bytes=-16384", f"bytes={(i * 7919) % 900_000}-{(i * 7919) % 900_000 + 29_999}"):
            conn.request("GET", path, headers={"Range": rng})
            r = conn.getresponse()
            assert r.status == 206 and len(r.read()) in (16384, 30000)
        times.append((time.perf_counter() - t) * 1000)
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    etag = r.getheader("ETag")
    reval = []
    for _ in range(requests):
        t = time.perf_counter()
        conn.request("GET", path, headers={"If-None-Match": etag})
        r = conn.getresponse()
        r.read()
        assert r.status == 304
        reval.append((time.perf_counter() - t) * 1000)
    conn.close()

    def one(i: int) -> None:
        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", path, headers={"Range": f"bytes={i * 1000}-{i * 1000 + 9999}"})
        assert c.getresponse().read()
        c.close()

    walls = []
    with ThreadPoolExecutor(burst) as pool:
        for _ in range(5):
            t = time.perf_counter()
            list(pool.map(one, range(burst)))
            walls.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {
        "seq_ms": statistics.median(times),
        "seq_p95_ms": times[int(0.95 * len(times))],
        "304_ms": statistics.median(reval),
        "burst_ms": statistics.median(walls),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other", required=True, help="path of another serve.py with start_server (e.g. the old one)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--burst", type=int, default=32)
    args = ap.parse_args()
    from bluff_ray.web import serve as current

    with tempfile.TemporaryDirectory() as d:
        root, viewer = Path(d) / "r", Path(d) / "v"
        (root / "nodes").mkdir(parents=True)
        viewer.mkdir()
        (viewer / "index.html").write_text("<!doctype html>")
        (root / "manifest.json").write_text("{}")
        (root / "nodes" / "part-0.parquet").write_bytes(os.urandom(1_000_000))
        rows = []
        for name, mod in (("other (" + Path(args.other).name + ")", load(args.other)), ("current", current)):
            server, _ = mod.start_server(root, viewer_dir=viewer)
            try:
                measure(*server.server_address[:2], 20, 4)  # warm-up
                rows.append((name, measure(*server.server_address[:2], args.requests, args.burst)))
            finally:
                server.shutdown()
                server.server_close()
    print(f"{'server':28} {'suffix+range ms (p50)':>22} {'p95':>8} {'304 ms':>8} {f'{args.burst} conns ms':>12}")
    for name, m in rows:
        print(f"{name:28} {m['seq_ms']:22.2f} {m['seq_p95_ms']:8.2f} {m['304_ms']:8.2f} {m['burst_ms']:12.1f}")


if __name__ == "__main__":
    main()
