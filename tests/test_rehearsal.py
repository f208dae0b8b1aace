"""A rehearsal of a full-scale run: the rehearsal model (1,000 classes, GoogLeNet's nine mixed
layers and widths) on synthetic images, every target of two originals (2 x 999 pairs) through the
real pipeline on local Ray, read back with pyarrow, DuckDB and fastparquet with partition filters."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from bluff_ray.results import layout
from bluff_ray.run.config import load
from bluff_ray.run.driver import run

pytestmark = pytest.mark.ray

ORIGINALS = (0, 999)


@pytest.fixture(scope="module")
def rehearsal_root(ray_session, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rehearsal") / "root")
    cfg = load(
        None,
        {
            "model": "rehearsal",
            "data": "synthetic",
            "out": out,
            "originals": list(ORIGINALS),
            "images_per_class": 1,
            "attack.steps": 2,
            "assets.enabled": False,
            "progress": False,
        },
    )
    summary = run(cfg)
    assert not summary.failed and summary.pairs_written == 2 * 999, summary.report()
    return out


def test_every_pair_of_the_originals_against_all_1000_classes(rehearsal_root):
    m = json.load(open(os.path.join(rehearsal_root, "manifest.json")))
    assert m["classes"] == 1000 and m["pairs_total"] == 1998 and m["finished"]
    assert [l["channels"] for l in m["layers"]] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    k = m["targets_per_file"]
    assert k == layout.max_targets_per_file(10)
    for o in ORIGINALS:
        idx = pq.read_table(os.path.join(rehearsal_root, layout.pair_index_path(o)))
        assert idx.column("target").to_pylist() == [t for t in range(1000) if t != o]
        for kind in ("pairs", "nodes", "edges", "causal"):
            files = glob.glob(os.path.join(rehearsal_root, kind, f"original={o}", "*.parquet"))
            assert len(files) == -(-999 // k)  # no per-pair objects: one file per unit and table
            for f in files:
                if kind != "pairs":
                    with open(f, "rb") as fh:
                        assert layout.footer_size(fh.read()) <= layout.footer_limit(kind), f  # the viewer's first read
    assert len(glob.glob(os.path.join(rehearsal_root, "importance", "*", "*.parquet"))) == 1000


def test_read_back_with_partition_filters(rehearsal_root):
    import duckdb
    import fastparquet

    ds = pads.dataset(os.path.join(rehearsal_root, "pair_index"), partitioning="hive")
    t = ds.to_table(filter=pads.field("original") == 999)
    assert t.num_rows == 999 and set(t.column("original").to_pylist()) == {999}
    con = duckdb.connect()
    n, n_orig = con.execute(
        f"select count(*), count(distinct original) from read_parquet('{rehearsal_root}/pair_index/*/*.parquet', "
        "hive_partitioning=true)"
    ).fetchone()
    assert (n, n_orig) == (1998, 2)
    nodes_999 = con.execute(
        f"select count(*) from read_parquet('{rehearsal_root}/nodes/*/*.parquet', hive_partitioning=true) "
        "where original = 999"
    ).fetchone()[0]
    assert nodes_999 == sum(t.column("n_nodes").to_pylist()) > 999 * 9
    files = sorted(glob.glob(os.path.join(rehearsal_root, "nodes", "*", "*.parquet")))
    pf = fastparquet.ParquetFile(files, root=os.path.join(rehearsal_root, "nodes"))
    df = pf.to_pandas(columns=["target", "layer", "channel"], filters=[("original", "==", 0)])
    assert (
        len(df)
        == con.execute(f"select count(*) from read_parquet('{rehearsal_root}/nodes/original=0/*.parquet')").fetchone()[
            0
        ]
    )


def test_edges_read_back_in_every_reader_at_the_documented_precision(rehearsal_root):
    """Schema 3 edges (one rounded influence column per strength, zstd) read the same in pyarrow,
    DuckDB and fastparquet, and every stored influence is already at 8 significant bits."""
    import duckdb
    import fastparquet

    f = sorted(glob.glob(os.path.join(rehearsal_root, "edges", "original=0", "*.parquet")))[0]
    t = pq.read_table(f)
    names = ["influence_original", "influence_target"] + [layout.influence_column(i) for i in range(10)]
    assert t.schema.names[5:] == names and t.num_rows > 0
    ref = np.stack([t.column(n).to_numpy(zero_copy_only=False) for n in names], 1).astype(np.float32)
    assert np.array_equal(layout.round_influence(ref), ref, equal_nan=True)  # stored rounded: rounding is a no-op
    got = duckdb.connect().execute(f"select {', '.join(names)} from read_parquet('{f}')").fetchnumpy()
    assert np.array_equal(np.stack([np.asarray(got[n], np.float32) for n in names], 1), ref, equal_nan=True)
    df = fastparquet.ParquetFile(f).to_pandas(columns=names)
    assert np.array_equal(df[names].to_numpy(np.float32), ref, equal_nan=True)
    md = pq.ParquetFile(f).metadata
    assert {md.row_group(0).column(i).compression for i in range(md.num_columns)} == {"ZSTD"}


def test_global_files_cover_all_classes(rehearsal_root):
    classes = pq.read_table(os.path.join(rehearsal_root, layout.CLASSES_PATH)).to_pylist()
    assert len(classes) == 1000 and all(c["n_images"] == 1 for c in classes)
    assert np.mean([c["accuracy"] for c in classes]) > 0.9  # the rehearsal model fits the synthetic data
    assert [c["n_as_original"] for c in classes if c["n_as_original"]] == [999, 999]
    ov = pq.read_table(os.path.join(rehearsal_root, layout.OVERVIEW_PATH))
    assert ov.num_rows == 10 * 1000
    row0 = ov.to_pylist()[0]
    assert len(row0["success"]) == 1000 and row0["success"][0] == layout.OVERVIEW_MISSING
    for key in layout.ranking_keys(10):
        assert pq.ParquetFile(os.path.join(rehearsal_root, layout.ranking_path(key))).metadata.num_rows == 1998
    atlas = pq.read_table(os.path.join(rehearsal_root, layout.ATLAS_PATH))
    assert atlas.num_rows == 5488
