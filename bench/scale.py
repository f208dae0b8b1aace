"""Results at full scale: the reduce at 999,000 pairs, and the bytes of one pair (storage, viewer).

    .venv/bin/python bench/scale.py --out /tmp/bluff-scale            # 1,000 classes, all pairs
    .venv/bin/python bench/scale.py --classes 100 --out /tmp/s100     # quicker
    .venv/bin/python bench/scale.py --storage ROOT                    # bytes per pair, before/after
    .venv/bin/python bench/scale.py --storage ROOT --viewer           # ... and each pair in the viewer

``--storage ROOT`` reads the pairs of a real results root (schema 2 or 3; e.g. a rehearsal run at
50 images x 50 steps, see BENCHMARKS.md) and writes their tables again, side by side in one run,
with the schema-2 writer (its settings are kept below as ``v2_*``) and with today's writer
(``results.layout``/``results.rows``), plus the other encodings that were considered. The real
pairs are repeated to fill a whole unit of ``targets_per_file`` row groups, so footers are full
size. Reported per pair: bytes on disk by table, and the bytes the viewer reads to open the pair
(its suffix reads of the nodes/edges footers plus the pair's column chunks outside them), for the
first graph and in full.

Pair rows and atlas contributions are synthetic but shaped like the rehearsal model's (GoogLeNet's
nine mixed layers, ~180 displayed and ~15 exploited neurons per pair, 10 strengths), and go
through the production code: ``reduce.Aggregate.add_unit`` with a ``UnitAtlas`` per unit (what a
worker returns, or what a resumed run reads from a unit marker's metadata), then
``reduce.write_global`` into a local results folder. Reported: the driver time of each step, the
driver's peak memory, the bytes and object counts of the global files, and the size of a unit
marker (what a resume reads per unit).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bluff_ray.results import layout  # noqa: E402
from bluff_ray.results.reduce import Aggregate, LayerSpec, UnitAtlas, write_global  # noqa: E402
from bluff_ray.results.store import Store  # noqa: E402

WIDTHS = [256, 480, 512, 512, 512, 528, 832, 832, 1024]
NAMES = ["mixed3a", "mixed3b", "mixed4a", "mixed4b", "mixed4c", "mixed4d", "mixed4e", "mixed5a", "mixed5b"]
S = 10


def unit(rng, original: int, part: int, targets: np.ndarray, total: int) -> tuple[pa.Table, UnitAtlas]:
    n = len(targets)
    ns = np.sort(rng.integers(0, 51, (n, S)), axis=1).astype(np.int32)
    rate = (ns / 50).astype(np.float32)
    lst = lambda m, t: pa.array(list(m), pa.list_(t))  # noqa: E731
    pairs = pa.table(
        {
            "target": pa.array(targets, pa.int32()),
            "n_images": pa.array(np.full(n, 50), pa.int32()),
            "n_success": lst(ns, pa.int32()),
            "success_rate": lst(rate, pa.float32()),
            "n_nodes": pa.array(np.full(n, 180), pa.int32()),
            "n_edges": pa.array(np.full(n, 2800), pa.int32()),
            "n_exploited": pa.array(rng.integers(0, 30, n), pa.int32()),
            "defused": lst(rng.random((n, S)).astype(np.float32), pa.float32()),
            "row_group": pa.array(np.arange(n), pa.int32()),
            "part": pa.array(np.full(n, part), pa.int32()),
        },
        schema=layout.PAIRS_SCHEMA,
    )
    disp_t = np.repeat(targets, 180).astype(np.int32)
    disp_n = rng.integers(0, total, n * 180).astype(np.int32)
    ex_t = np.repeat(targets, 15).astype(np.int32)
    displayed = pa.table({"target": disp_t, "neuron": disp_n})
    exploited = pa.table(
        {
            "target": ex_t,
            "neuron": rng.integers(0, total, n * 15).astype(np.int32),
            "exploited_mask": rng.integers(1, 1024, n * 15).astype(np.int32),
            "effect": lst(rng.random((n * 15, S)).astype(np.float32), pa.float32()),
        }
    )
    return pairs, UnitAtlas(displayed, exploited)


# --- bytes per pair (--storage) --------------------------------------------------------------------

KEYS = ["target", "src_layer", "src_channel", "dst_layer", "dst_channel"]


def edge_matrix(t: pa.Table) -> tuple[pa.Table, np.ndarray]:
    """(key columns, float32 [n, 2 + S] influences: original, target, each strength) of an edges
    table in schema 2 (``influence_attacked`` list) or 3 (``influence_attacked_<i>`` columns)."""
    cols = [
        np.asarray(t.column("influence_original"), np.float32),
        np.asarray(t.column("influence_target"), np.float32),
    ]
    if "influence_attacked" in t.schema.names:
        att = np.array(t.column("influence_attacked").to_pylist(), np.float32).reshape(t.num_rows, -1)
    else:
        names = sorted(
            (n for n in t.schema.names if n.startswith("influence_attacked_")), key=lambda n: int(n.rsplit("_", 1)[1])
        )
        att = np.stack([np.asarray(t.column(n), np.float32) for n in names], 1)
    return t.select(KEYS), np.concatenate([np.stack(cols, 1), att], 1)


def v2_edges(keys: pa.Table, m: np.ndarray) -> pa.Table:
    """Schema 2's edges: exact float32, the attacked influences in one list column."""
    s = m.shape[1] - 2
    offsets = pa.array(np.arange(0, (len(m) + 1) * s, s, dtype=np.int32))
    lst = pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(m[:, 2:]).reshape(-1)))
    return (
        keys.append_column("influence_original", pa.array(m[:, 0]))
        .append_column("influence_target", pa.array(m[:, 1]))
        .append_column("influence_attacked", lst)
    )


def wide_edges(
    keys: pa.Table, m: np.ndarray, values: np.ndarray | None = None, type_: pa.DataType | None = None
) -> pa.Table:
    names = ["influence_original", "influence_target"] + [layout.influence_column(i) for i in range(m.shape[1] - 2)]
    v = m if values is None else values
    type_ = type_ or pa.float32()
    for j, n in enumerate(names):
        keys = keys.append_column(pa.field(n, type_), pa.array(v[:, j], type_))
    return keys


#: The schema-2 writer's settings (before this round): snappy, dictionary everywhere, no checksums.
V2_OPTIONS = dict(compression="snappy", write_statistics=["target"])


def write_grouped(t: pa.Table, groups: list[int], **options) -> bytes:
    """``t`` (sorted by target) with one row group per target, with the given pyarrow options."""
    sink = pa.BufferOutputStream()
    col = np.asarray(t.column("target"))
    with pq.ParquetWriter(sink, t.schema, **options) as w:
        for g in groups:
            idx = np.flatnonzero(col == g)
            part = t.slice(int(idx[0]), len(idx)) if len(idx) else t.slice(0, 0)
            w.write_table(part, row_group_size=max(1, part.num_rows))
    return sink.getvalue().to_pybytes()


def open_bytes(data: bytes, rg: int, columns: list[str] | None, tail: int) -> int:
    """Bytes the viewer fetches to read ``columns`` (None = all) of row group ``rg``: its suffix read
    of ``tail`` bytes (footer), then the column chunks (or the parts of them) before that suffix."""
    md = pq.ParquetFile(pa.BufferReader(data)).metadata
    start_tail = max(0, len(data) - tail)
    total = min(tail, len(data))
    if layout.footer_size(data) + 8 > tail:  # a footer larger than the first read costs a second request
        total += layout.footer_size(data) + 8 - tail
    r = md.row_group(rg)
    for i in range(r.num_columns):
        c = r.column(i)
        top = c.path_in_schema.split(".")[0]
        if columns is not None and top not in columns:
            continue
        lo = c.dictionary_page_offset or c.data_page_offset
        hi = lo + c.total_compressed_size
        total += max(0, min(hi, start_tail) - lo)
    return total


def storage(root: str, targets_per_file: int | None) -> int:
    import glob
    import json

    manifest = json.load(open(os.path.join(root, "manifest.json")))
    S = len(manifest["strengths"])
    k = targets_per_file or layout.max_targets_per_file(S)
    edges, nodes, causal, markers, pairs = [], [], [], [], 0
    for f in sorted(glob.glob(os.path.join(root, "edges", "*", "*.parquet"))):
        pf = pq.ParquetFile(f)
        for i in range(pf.metadata.num_row_groups):
            if pf.metadata.row_group(i).num_rows:
                edges.append(edge_matrix(pf.read_row_group(i)))
                pairs += 1
        nf = pq.ParquetFile(f.replace("/edges/", "/nodes/"))
        nodes += [nf.read_row_group(i) for i in range(nf.metadata.num_row_groups) if nf.metadata.row_group(i).num_rows]
        for kind in ("causal", "causal_curve"):
            cf = f.replace("/edges/", f"/{kind}/")
            if os.path.exists(cf):
                causal.append((kind, os.path.getsize(cf) / pq.ParquetFile(cf).metadata.num_row_groups))
        markers.append(os.path.getsize(f.replace("/edges/", "/pairs/")) / pf.metadata.num_row_groups)
    if not edges:
        print(f"no edges under {root}")
        return 2
    n_edges = [len(m) for _, m in edges]
    if manifest.get("schema_version", 0) >= 3:
        print(
            "note: this root's influences are already rounded (schema 3): the schema-2 writer's 'before' "
            "column then understates schema 2; measure a schema-2 root for the real before\n"
        )
    print(
        f"{root}: {pairs} pairs with connections ({S} strengths), repeated to fill units of {k} targets; "
        f"connections per pair: median {int(np.median(n_edges)):,}, max {max(n_edges):,}\n"
    )

    def unit_of(make) -> tuple[pa.Table, list[int]]:
        """k row groups (targets 0..k-1) cycling through the real pairs."""
        parts = []
        for g in range(k):
            keys, m = edges[g % len(edges)]
            keys = keys.set_column(0, "target", pa.array(np.full(len(m), g, np.int32)))
            parts.append(make(keys, m))
        return pa.concat_tables(parts), list(range(k))

    def nodes_unit() -> pa.Table:
        return pa.concat_tables(
            [
                nodes[g % len(nodes)].set_column(
                    0, "target", pa.array(np.full(nodes[g % len(nodes)].num_rows, g, np.int32))
                )
                for g in range(k)
            ]
        )

    rounded = lambda keys, m: wide_edges(keys, m, layout.round_influence(m))  # noqa: E731
    scale = lambda m: np.maximum(np.nan_to_num(np.abs(m)).max(0), 1e-30)  # noqa: E731
    int16 = lambda keys, m: wide_edges(keys, m, np.nan_to_num(np.round(m / scale(m) * 32767), nan=-32768), pa.int16())  # noqa: E731
    infl = ["influence_original", "influence_target"] + [layout.influence_column(i) for i in range(S)]
    stats = dict(write_statistics=["target"])
    no_dict = lambda extra: dict(use_dictionary=KEYS, **extra)  # noqa: E731
    options = [  # name, readers, table maker, pyarrow options
        ("schema 2 (before): list<float32>, snappy", "all", v2_edges, V2_OPTIONS),
        ("one column per condition, exact float32, snappy", "all", wide_edges, dict(compression="snappy", **stats)),
        (
            "one column per condition, exact float32, zstd, no dictionary",
            "all",
            wide_edges,
            dict(compression="zstd", use_dictionary=False, **stats),
        ),
        (
            "per condition, 8-bit-significand float32, snappy",
            "all",
            rounded,
            dict(compression="snappy", **no_dict(stats)),
        ),
        (
            "per condition, 8-bit-significand, BYTE_STREAM_SPLIT + snappy",
            "not fastparquet",
            rounded,
            dict(compression="snappy", column_encoding={n: "BYTE_STREAM_SPLIT" for n in infl}, **no_dict(stats)),
        ),
        (
            "per condition, 8-bit-significand, BYTE_STREAM_SPLIT + zstd",
            "not fastparquet",
            rounded,
            dict(compression="zstd", column_encoding={n: "BYTE_STREAM_SPLIT" for n in infl}, **no_dict(stats)),
        ),
        (
            "per condition, int16 with a per-column scale, DELTA_BINARY_PACKED",
            "all (values x scale)",
            int16,
            dict(compression="snappy", column_encoding={n: "DELTA_BINARY_PACKED" for n in infl}, **no_dict(stats)),
        ),
        (
            "**chosen: per condition, 8-bit-significand float32, zstd, no dictionary**",
            "all",
            rounded,
            dict(layout.PARTITION_OPTIONS, **stats),
        ),
    ]
    first = KEYS + ["influence_target", "influence_original", layout.influence_column(S // 2)]
    print(
        "| edges encoding | readers | edges bytes per pair on disk | edges footer | edges bytes to open a pair: first graph / full |"
    )
    print("|---|---|---|---|---|")
    for name, readers, make, opts in options:
        t, groups = unit_of(make)
        data = write_grouped(t, groups, **opts)
        tail = layout.VIEWER_TAIL_BYTES if make is v2_edges else layout.EDGES_TAIL_BYTES
        fg = np.median([open_bytes(data, g, first if make is not v2_edges else None, tail) for g in groups])
        full = np.median([open_bytes(data, g, None, tail) for g in groups])
        print(
            f"| {name} | {readers} | {len(data) / k / 1000:.1f} KB | {layout.footer_size(data) / 1024:.1f} KiB | "
            f"{fg / 1000:.1f} / {full / 1000:.1f} KB |"
        )
    # the writers themselves, before and after, every table
    t2, groups = unit_of(v2_edges)
    t3, _ = unit_of(lambda keys, m: wide_edges(keys, m, layout.round_influence(m)))
    n_t = nodes_unit()
    before = {"edges": write_grouped(t2, groups, **V2_OPTIONS), "nodes": write_grouped(n_t, groups, **V2_OPTIONS)}
    after = {
        "edges": layout.table_to_parquet(t3, "target", groups, footer_limit=layout.footer_limit("edges")),
        "nodes": layout.table_to_parquet(n_t, "target", groups, footer_limit=layout.footer_limit("nodes")),
    }
    side = {kind: float(np.mean([b for k, b in causal if k == kind])) for kind in sorted({k for k, _ in causal})}
    side["pairs marker"] = float(np.mean(markers))
    print("\n| bytes per pair | schema 2 writer (before) | schema 3 writer (after) |\n|---|---|---|")
    tot = [0.0, 0.0]
    for kind in ("edges", "nodes"):
        b, a = len(before[kind]) / k, len(after[kind]) / k
        tot[0] += b
        tot[1] += a
        print(f"| {kind} | {b / 1000:.1f} KB | {a / 1000:.1f} KB |")
    for kind, b in side.items():  # not rewritten: as the root holds them
        tot[0] += b
        tot[1] += b
        print(f"| {kind} (as in the root) | {b / 1000:.1f} KB | {b / 1000:.1f} KB |")
    print(f"| **on disk per pair** | **{tot[0] / 1000:.1f} KB** | **{tot[1] / 1000:.1f} KB** |")
    print(f"| 999,000 pairs | {tot[0] * 999000 / 1e9:.0f} GB | {tot[1] * 999000 / 1e9:.0f} GB |")
    fg_b = [
        open_bytes(before["nodes"], g, None, layout.VIEWER_TAIL_BYTES)
        + open_bytes(before["edges"], g, None, layout.VIEWER_TAIL_BYTES)
        for g in groups
    ]
    fg_a = [
        open_bytes(after["nodes"], g, None, layout.VIEWER_TAIL_BYTES)
        + open_bytes(after["edges"], g, first, layout.EDGES_TAIL_BYTES)
        for g in groups
    ]
    full_a = [
        open_bytes(after["nodes"], g, None, layout.VIEWER_TAIL_BYTES)
        + open_bytes(after["edges"], g, None, layout.EDGES_TAIL_BYTES)
        for g in groups
    ]
    print(
        f"| to open a pair, first graph (nodes + edges, footers included; median / max over row groups) | "
        f"{np.median(fg_b) / 1000:.1f} / {max(fg_b) / 1000:.1f} KB | {np.median(fg_a) / 1000:.1f} / {max(fg_a) / 1000:.1f} KB |"
    )
    print(f"| to open a pair, all strengths | {np.median(fg_b) / 1000:.1f} KB | {np.median(full_a) / 1000:.1f} KB |")
    return 0


def viewer_pair_bytes(root: str) -> int:
    """Every pair of ``root`` opened in the real viewer (headless Chromium, ``bluff serve``): the
    bytes of its nodes/edges files at the first graph, and once every strength is read."""
    import glob

    from playwright.sync_api import sync_playwright

    from bluff_ray.web.serve import start_server

    pairs = []
    for f in sorted(glob.glob(os.path.join(root, "pair_index", "original=*", "part-0.parquet"))):
        o = int(f.split("original=")[1].split(os.sep)[0])
        pairs += [(o, r["target"], r["n_edges"]) for r in pq.read_table(f).to_pylist()]
    server, url = start_server(root)
    pair_bytes = lambda d: sum(v for k, v in d.items() if k.startswith(("nodes/", "edges/")))  # noqa: E731
    print(
        "\n| pair (viewer, bluff serve) | connections | first graph: nodes + edges bytes | all strengths |\n|---|---|---|---|"
    )
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium")
            for o, t, n in pairs:
                ctx = browser.new_context(viewport={"width": 1400, "height": 860})
                page = ctx.new_page()
                page.goto(f"{url}?original={o}&target={t}")
                page.wait_for_selector(f"svg#graph[data-pair='{o}-{t}'][data-state='ready']", timeout=120000)
                first = pair_bytes(page.evaluate("window.__bluff.firstGraphBytes"))
                full = pair_bytes(page.evaluate("window.__bluff.traffic.byFile"))
                print(f"| {o} → {t} | {n:,} | {first / 1000:.1f} KB | {full / 1000:.1f} KB |")
                ctx.close()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return 0


# --- the reduce at 999,000 pairs ---------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--out")
    ap.add_argument("--storage", metavar="ROOT", help="bytes per pair of this results root's pairs, before/after")
    ap.add_argument(
        "--targets-per-file",
        type=int,
        help="with --storage: row groups per file (default: layout.max_targets_per_file)",
    )
    ap.add_argument(
        "--viewer",
        action="store_true",
        help="with --storage (a schema-3 root): also open every pair in the real viewer and report its bytes",
    )
    args = ap.parse_args(argv)
    if args.storage:
        rc = storage(args.storage, args.targets_per_file)
        return rc or (viewer_pair_bytes(args.storage) if args.viewer else 0)
    if not args.out:
        ap.error("--out is required (or --storage ROOT)")
    n = args.classes
    layers = [LayerSpec(a, b) for a, b in zip(NAMES, WIDTHS)]
    total = sum(WIDTHS)
    agg = Aggregate([f"class {i}" for i in range(n)], layers, S)
    rng = np.random.default_rng(0)
    k = layout.max_targets_per_file(S)
    t_make = t_add = 0.0
    marker_bytes = None
    units = 0
    for o in range(n):
        targets = np.array([t for t in range(n) if t != o], np.int32)
        for j in range(0, len(targets), k):
            t0 = time.perf_counter()
            pairs, atlas = unit(rng, o, j // k, targets[j : j + k], total)
            t1 = time.perf_counter()
            if marker_bytes is None:
                marker_bytes = len(layout.table_to_parquet(pairs, metadata=atlas.metadata()))
            agg.add_unit(o, j // k, pairs, atlas=atlas)
            t_add += time.perf_counter() - t1
            t_make += t1 - t0
            units += 1
    store = Store(args.out)
    t0 = time.perf_counter()
    write_global(store, agg, [str(i) for i in range(n)], {})
    t_write = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = {}
    for rel in store.list():
        top = rel.split("/")[0]
        sizes.setdefault(top, [0, 0])
        sizes[top][0] += 1
        sizes[top][1] += os.path.getsize(os.path.join(args.out, rel))
    print(f"{n} classes, {agg.n_pairs:,} pairs in {units:,} units of {k} targets\n")
    print("| step | driver time |\n|---|---|")
    print(f"| add_unit x {units:,} (pair rows + atlas counters) | {t_add:.1f} s |")
    print(f"| write_global (pair index, rankings, overview, atlas, classes) | {t_write:.1f} s |")
    print(
        f"\ndriver peak memory (RSS): {peak:,.0f} MB; one unit marker with its atlas metadata: "
        f"{marker_bytes / 1024:.1f} KiB (a resume reads {units:,} of them: "
        f"{units * marker_bytes / 2**30:.2f} GiB)\n"
    )
    print("| global files | objects | bytes |\n|---|---|---|")
    for top, (count, b) in sorted(sizes.items()):
        print(f"| {top} | {count:,} | {b / 2**20:,.1f} MiB |")
    # Resume read volume and driver memory at 50,000 units (issue 19 item 4) are measured by the
    # pipeline's resume bench; add them here, before vs after, next to the marker size above.
    return 0


if __name__ == "__main__":
    sys.exit(main())
