"""The results layout: bluff_ray/layout.py's schemas are the tables of docs/FORMAT.md, and the
partition files' footers fit the viewer's first range request."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bluff_ray.results import layout

FORMAT_MD = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"


def _format_columns(heading_prefix: str) -> dict[str, str]:
    """Column name -> type string of the first table under the FORMAT.md heading with that prefix."""
    text = FORMAT_MD.read_text()
    section = text[text.index(f"## {heading_prefix}") :]
    section = section[: section.index("\n## ", 3)] if "\n## " in section[3:] else section
    return dict(re.findall(r"^\| `(\w+)` \| ([\w<>]+) \|", section, flags=re.M))


def _arrow_type(spec: str) -> pa.DataType:
    m = re.fullmatch(r"list<(\w+)>", spec)
    if m:
        return pa.list_(_arrow_type(m.group(1)))
    return {"int32": pa.int32(), "float32": pa.float32(), "string": pa.string(), "binary": pa.binary()}[spec]


@pytest.mark.parametrize(
    "heading,schema",
    [
        ("classes.parquet", layout.CLASSES_SCHEMA),
        ("importance/", layout.IMPORTANCE_SCHEMA),
        ("pairs/", layout.PAIRS_SCHEMA),
        ("nodes/", layout.NODES_SCHEMA),
        ("edges/", layout.edges_schema(1)),
        ("causal/", layout.CAUSAL_SCHEMA),
        ("rankings/", layout.RANKING_SCHEMA),
        ("overview/", layout.OVERVIEW_SCHEMA),
        ("atlas/", layout.ATLAS_SCHEMA),
    ],
)
def test_schemas_are_the_ones_in_format_md(heading, schema):
    cols = _format_columns(heading)
    assert cols, f"no column table found under '## {heading}' in FORMAT.md"
    assert [f.name for f in schema] == list(cols)
    for f in schema:
        assert f.type == _arrow_type(cols[f.name]), f.name


def test_format_md_states_the_schema_version():
    assert f"(schema version {layout.SCHEMA_VERSION})" in FORMAT_MD.read_text().splitlines()[0]


def _rows(n_targets: int, per_target: int, s: int) -> pa.Table:
    n = n_targets * per_target
    return pa.table(
        {
            "target": pa.array([t for t in range(n_targets) for _ in range(per_target)], pa.int32()),
            "layer": ["mixed4e"] * n,
            "channel": pa.array(range(n), pa.int32()),
            "role": ["exploited"] * n,
            "importance_original": pa.array([1.5] * n, pa.float32()),
            "importance_target": pa.array([0.5] * n, pa.float32()),
            "importance_attacked": pa.array([[0.25] * s] * n, pa.list_(pa.float32())),
            "exploited_mask": pa.array([3] * n, pa.int32()),
            "effect": pa.array([[0.0] * s] * n, pa.list_(pa.float32())),
        },
        schema=layout.NODES_SCHEMA,
    )


def test_footer_cap_is_enforced_and_the_default_chunk_fits():
    s = 10
    k = layout.max_targets_per_file(s)
    assert k >= 16  # at 10 strengths a file holds about 20 targets (docs/FORMAT.md)
    data = layout.table_to_parquet(_rows(k, 30, s), "target", list(range(k)), footer_limit=layout.FOOTER_LIMIT)
    assert layout.footer_size(data) + 8 <= layout.VIEWER_TAIL_BYTES
    f = pq.ParquetFile(pa.BufferReader(data))
    assert f.metadata.num_row_groups == k
    # statistics only where readers filter (target), so the footer stays small
    rg = f.metadata.row_group(0)
    assert rg.column(0).statistics is not None and rg.column(0).statistics.has_min_max
    assert rg.column(1).statistics is None or not rg.column(1).statistics.has_min_max
    with pytest.raises(layout.FooterTooLarge):
        layout.table_to_parquet(_rows(4 * k, 1, s), "target", list(range(4 * k)), footer_limit=layout.FOOTER_LIMIT)


def test_grouped_files_have_one_row_group_per_target_even_empty():
    t = _rows(3, 2, 2).filter(pa.compute.not_equal(pa.array([0, 0, 1, 1, 2, 2]), 1))
    f = pq.ParquetFile(pa.BufferReader(layout.table_to_parquet(t, "target", [0, 1, 2])))
    assert [f.metadata.row_group(i).num_rows for i in range(3)] == [2, 0, 2]
    with pytest.raises(ValueError, match="sorted"):
        layout.table_to_parquet(t.take([2, 0]), "target", [0, 2])
    with pytest.raises(ValueError, match="not in groups"):
        layout.table_to_parquet(t, "target", [0, 1])


def test_influence_rounding_is_round_to_nearest_even_with_8_significant_bits():
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [
            rng.standard_normal(20000) * 10.0 ** rng.integers(-6, 6, 20000),
            [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, 3.0e38],
        ]
    ).astype(np.float32)
    r = layout.round_influence(x)
    assert r.dtype == np.float32 and np.isnan(r[-3]) and np.isnan(r).sum() == 1
    finite = np.isfinite(x) & (np.abs(x) > 1e-37)
    rel = np.abs(r[finite].astype(np.float64) - x[finite]) / np.abs(x[finite].astype(np.float64))
    assert rel.max() <= 2.0 ** -(layout.INFLUENCE_MANTISSA_BITS + 1)  # the documented bound (FORMAT.md)
    # independent reference: round-half-even of the significand scaled to 8 bits, in float64
    m, e = np.frexp(x[finite].astype(np.float64))
    ref = np.ldexp(np.round(m * 2 ** (layout.INFLUENCE_MANTISSA_BITS + 1)), e - layout.INFLUENCE_MANTISSA_BITS - 1)
    assert np.array_equal(r[finite].astype(np.float64), ref)
    assert np.array_equal(np.signbit(r[:-3]), np.signbit(x[:-3])) and r[-5] == np.inf and r[-4] == -np.inf
    assert r[-7] == 0 and r[-6] == 0 and np.signbit(r[-6])
    assert layout.round_influence(r).tobytes() == r.tobytes()  # idempotent: rewriting changes nothing


def test_edges_store_about_two_bytes_per_influence_readable_by_pyarrow_duckdb_and_fastparquet(tmp_path):
    import duckdb
    import fastparquet

    rng = np.random.default_rng(0)
    n, s = 4000, 10
    raw = (rng.lognormal(0, 2, (n, 2 + s)) * np.where(rng.random((n, 2 + s)) < 0.2, -1, 1)).astype(np.float32)
    vals = layout.round_influence(raw)
    names = ["influence_original", "influence_target"] + [layout.influence_column(i) for i in range(s)]
    t = pa.table(
        {
            "target": pa.array(np.zeros(n, np.int32)),
            "src_layer": ["mixed4a"] * n,
            "src_channel": pa.array(rng.integers(0, 512, n).astype(np.int32)),
            "dst_layer": ["mixed4b"] * n,
            "dst_channel": pa.array(np.sort(rng.integers(0, 512, n)).astype(np.int32)),
            **{c: pa.array(vals[:, j]) for j, c in enumerate(names)},
        },
        schema=layout.edges_schema(s),
    )
    data = layout.table_to_parquet(t, "target", [0], footer_limit=layout.footer_limit("edges"))
    f = pq.ParquetFile(pa.BufferReader(data))
    for j, c in enumerate(names):
        col = f.metadata.row_group(0).column(5 + j)
        assert col.path_in_schema == c and col.compression == "ZSTD" and "RLE_DICTIONARY" not in col.encodings
        assert col.total_compressed_size < 2.15 * n, (c, col.total_compressed_size)  # 2 bytes a value, not 4
    assert f.metadata.row_group(0).column(2).compression == "ZSTD"  # keys too (layout.PARTITION_OPTIONS)
    # the same values unrounded take twice the bytes: the rounding, not zstd alone, halves them
    exact = t.set_column(5, "influence_original", pa.array(raw[:, 0]))
    f2 = pq.ParquetFile(pa.BufferReader(layout.table_to_parquet(exact, "target", [0])))
    assert (
        f2.metadata.row_group(0).column(5).total_compressed_size
        > 1.7 * f.metadata.row_group(0).column(5).total_compressed_size
    )
    path = tmp_path / "edges.parquet"
    path.write_bytes(data)
    assert pq.read_table(path).equals(t)
    got = duckdb.connect().execute(f"select {', '.join(names)} from read_parquet('{path}')").fetchnumpy()
    assert all(np.array_equal(got[c], vals[:, j]) for j, c in enumerate(names))
    df = fastparquet.ParquetFile(str(path)).to_pandas()
    assert all(np.array_equal(df[c].to_numpy(), vals[:, j]) for j, c in enumerate(names))


def test_an_older_or_newer_root_is_refused_in_one_line_naming_both_versions():
    old = layout.version_refusal("/data/root", 2)
    assert "\n" not in old and "schema version 2" in old and f"writes version {layout.SCHEMA_VERSION}" in old
    assert "--overwrite" in old and "version 3: edges store one rounded influence column" in old
    assert "version 2:" not in old  # only what changed since the root's version
    none = layout.version_refusal("/data/root", None)
    assert "1 (or none)" in none and "version 2:" in none
    newer = layout.version_refusal("/data/root", layout.SCHEMA_VERSION + 1)
    assert "newer bluff_ray" in newer and "--overwrite" not in newer
