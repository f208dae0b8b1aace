"""The results layout (docs/FORMAT.md, schema version 3): every path and every Arrow schema in one place.

The pipeline, the reduce, the tests and the notebooks take paths and schemas from here, and the
viewer follows the same document, so a change to the format is a change to this module and to
docs/FORMAT.md in the same commit.

Why the files are cut the way they are (999,000 pairs must stay cheap to read):
- per original class, nodes/edges/causal files hold a bounded number of targets
  (``max_targets_per_file``) with one row group per target, so a file's Parquet footer fits the
  viewer's first range request (16 KiB; 32 KiB for edges) and one pair costs one footer plus its
  own row groups;
- edges hold one influence column per condition (``influence_attacked_<i>`` per strength), rounded
  to 8 significant bits, and partition files are zstd-compressed, so the viewer's first graph
  reads three of the 12 influence columns and a pair costs about 90 KB on disk instead of 300 KB
  (``bench/scale.py --storage``);
- ``pair_index/original=<o>/`` is one small file per original, read when that original is picked;
- ``rankings/`` and ``overview/`` are precomputed over all pairs so the viewer never reads
  999,000 index rows at startup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 3
#: What changed in each version (the refusal of an older root says it).
SCHEMA_CHANGES = {
    2: "pair_index/ per original, causal/, rankings/, overview/, atlas/",
    3: "edges store one rounded influence column per condition; zstd partition files; page checksums",
}


def version_refusal(where: str, found: Any) -> str:
    """The one-line refusal of a root written in another schema version (runs, notebooks)."""
    if isinstance(found, int) and found > SCHEMA_VERSION:
        return (
            f"{where} holds results in schema version {found}, written by a newer bluff_ray; this one reads "
            f"and writes version {SCHEMA_VERSION}. Use the bluff_ray that wrote it, or another output root."
        )
    changes = "; ".join(
        f"version {v}: {c}" for v, c in SCHEMA_CHANGES.items() if not isinstance(found, int) or v > found
    )
    return (
        f"{where} holds results in schema version {found if found is not None else '1 (or none)'}, written by an "
        f"older bluff_ray; this version writes version {SCHEMA_VERSION} (changed since: {changes}). Use another "
        "output root, or pass --overwrite to delete those results and recompute."
    )


#: The viewer reads a Parquet file's footer with one suffix request of this many bytes ...
VIEWER_TAIL_BYTES = 16 * 1024
#: ... except for edges files, whose footers have a column chunk per condition and row group
#: (about 1.2 KB per target at 10 strengths).
EDGES_TAIL_BYTES = 32 * 1024
#: Footer budget per partition file: the footer, its 4-byte length and the "PAR1" magic must fit
#: the viewer's first request.
FOOTER_LIMIT = VIEWER_TAIL_BYTES - 8
EDGES_FOOTER_LIMIT = EDGES_TAIL_BYTES - 8
#: Statistics only where a reader filters on them: per-row-group min/max of strings and lists
#: would triple the footer (measured: ~700 B vs ~560 B per row group of nodes).
STATISTICS_COLUMNS = ["target"]
#: Every data page carries a CRC32 of its bytes (readers that verify, such as the pipeline's
#: ``Store`` reads, refuse garbled pages instead of decoding garbage; hyparquet ignores it).
PARQUET_OPTIONS: dict[str, Any] = dict(compression="snappy", write_page_checksum=True)

# Values stored as "no value" in the overview matrix.
OVERVIEW_MISSING = 255
#: Explicit mantissa bits kept in stored edge influences (bfloat16's 7: 8 significant bits, a
#: relative rounding error of at most 2**-8 = 0.39 %). The two low bytes of every value are then
#: zero, which zstd removes (snappy does not): about 2 bytes a value instead of 4. PLAIN + zstd is
#: readable by pyarrow, DuckDB, fastparquet (which cannot decode BYTE_STREAM_SPLIT) and the viewer.
INFLUENCE_MANTISSA_BITS = 7
#: The nodes/edges/causal partition files (written with ``group_by``): zstd, no dictionary pages.
#: Measured on rehearsal pairs at 50 images (``bench/scale.py --storage``): nodes 9.3 KB a pair
#: instead of 15.0 (a dictionary of distinct float32 values only adds bytes), edge keys 2.4 KB
#: instead of 4.4. The other files keep snappy with dictionaries (PARQUET_OPTIONS).
PARTITION_OPTIONS: dict[str, Any] = dict(compression="zstd", use_dictionary=False)
OVERVIEW_SCALE = 254

LOCK_PATH = ".bluff-lock.json"
MANIFEST_PATH = "manifest.json"
CLASSES_PATH = "classes.parquet"
ATLAS_PATH = "atlas/neurons.parquet"
OVERVIEW_PATH = "overview/success.parquet"
ASSET_INDEX_PATH = "neurons/index.parquet"

#: Everything a run writes under a root (``--overwrite`` deletes exactly these).
RESULT_PREFIXES = (
    MANIFEST_PATH,
    CLASSES_PATH,
    "importance",
    "examples",
    "pairs",
    "pair_index",
    "nodes",
    "edges",
    "causal",
    "causal_curve",
    "rankings",
    "overview",
    "atlas",
    "neurons",
    "pair_index.parquet",
)


# --- paths --------------------------------------------------------------------------------------


def importance_path(class_id: int) -> str:
    return f"importance/class={int(class_id)}/part-0.parquet"


def examples_path(class_id: int) -> str:
    return f"examples/class={int(class_id)}/part-0.parquet"


def part_path(kind: str, original: int, part: int) -> str:
    """``pairs`` (the unit's commit marker), ``nodes``, ``edges``, ``causal`` or ``causal_curve`` of one unit."""
    if kind not in ("pairs", "nodes", "edges", "causal", "causal_curve"):
        raise ValueError(f"unknown partitioned table {kind!r}")
    return f"{kind}/original={int(original)}/part-{int(part)}.parquet"


def pair_index_path(original: int) -> str:
    return f"pair_index/original={int(original)}/part-0.parquet"


def ranking_path(key: str) -> str:
    return f"rankings/{key}.parquet"


def footer_limit(kind: str) -> int:
    """Footer cap of a ``nodes``/``edges``/``causal`` partition file (what the viewer's first read holds)."""
    return EDGES_FOOTER_LIMIT if kind == "edges" else FOOTER_LIMIT


def ranking_keys(n_strengths: int) -> list[str]:
    """``success-<i>`` per strength index i (0-based into manifest.strengths), then ``exploited``."""
    return [f"success-{i}" for i in range(n_strengths)] + ["exploited"]


# --- schemas --------------------------------------------------------------------------------------


def _flist() -> pa.DataType:
    return pa.list_(pa.float32())


IMPORTANCE_SCHEMA = pa.schema([("layer", pa.string()), ("channel", pa.int32()), ("importance", pa.float32())])

PAIRS_SCHEMA = pa.schema(
    [
        ("target", pa.int32()),
        ("n_images", pa.int32()),
        ("n_success", pa.list_(pa.int32())),
        ("success_rate", _flist()),
        ("n_nodes", pa.int32()),
        ("n_edges", pa.int32()),
        ("n_exploited", pa.int32()),
        ("defused", _flist()),
        ("row_group", pa.int32()),
        ("part", pa.int32()),
    ]
)

NODES_SCHEMA = pa.schema(
    [
        ("target", pa.int32()),
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("role", pa.string()),
        ("importance_original", pa.float32()),
        ("importance_target", pa.float32()),
        ("importance_attacked", _flist()),
        ("exploited_mask", pa.int32()),
        ("effect", _flist()),
    ]
)

EDGE_KEY_FIELDS = [
    ("target", pa.int32()),
    ("src_layer", pa.string()),
    ("src_channel", pa.int32()),
    ("dst_layer", pa.string()),
    ("dst_channel", pa.int32()),
]


def influence_column(i: int) -> str:
    """The edges column of the influence at strength index ``i`` (0-based into manifest.strengths)."""
    return f"influence_attacked_{int(i)}"


def edges_schema(n_strengths: int) -> pa.Schema:
    """Edges: keys, then one float32 influence column per condition (original, target, each strength).

    One column per strength, not a list: the viewer reads the columns of the strength it shows.
    """
    return pa.schema(
        EDGE_KEY_FIELDS
        + [("influence_original", pa.float32()), ("influence_target", pa.float32())]
        + [(influence_column(i), pa.float32()) for i in range(n_strengths)]
    )


def round_influence(values: Any) -> np.ndarray:
    """float32 ``values`` rounded to nearest (ties to even) with ``INFLUENCE_MANTISSA_BITS`` mantissa bits.

    The result is still float32 (every reader reads it as such); NaN and infinities are kept.
    """
    a = np.ascontiguousarray(values, dtype=np.float32)
    drop = 23 - INFLUENCE_MANTISSA_BITS
    u = a.view(np.uint32)
    bias = ((u >> np.uint32(drop)) & np.uint32(1)) + np.uint32((1 << (drop - 1)) - 1)
    r = ((u + bias) & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)).view(np.float32)
    return np.where(np.isnan(a), np.float32(np.nan), r).astype(np.float32)


#: Field order of the ``causal`` table's list columns (FORMAT.md ``causal``): packed into lists so a
#: causal file's footer (one entry per column and row group) stays within the viewer's first read.
CAUSAL_RECOVERY_FIELDS = ("n_images", "mean", "median", "restored", "defused", "ld_clean", "ld_adv")
CAUSAL_NULL_FIELDS = ("mean", "sd", "q05", "q95", "percentile", "p", "draws")
CAUSAL_MATCHED_FIELDS = ("mean", "q95", "percentile", "p")
CAUSAL_NOISING_FIELDS = ("value", "null_mean", "null_q95", "percentile", "p")
CAUSAL_SETS = ("exploited", "exploited_union", "top_original_target", "top_delta")

CAUSAL_SCHEMA = pa.schema(
    [
        ("target", pa.int32()),
        ("strength", pa.int32()),
        ("layer", pa.string()),
        ("set", pa.string()),
        ("n_neurons", pa.int32()),
        ("recovery", _flist()),
        ("null_stats", _flist()),
        ("matched", _flist()),
        ("noising", _flist()),
    ]
)

#: Dose-response orders of ``causal_curve`` and the field order of its ``summary`` list.
CURVE_ORDERS = ("exploited", "delta", "random")
CURVE_SUMMARY_FIELDS = ("auc", "k50")

CAUSAL_CURVE_SCHEMA = pa.schema(
    [
        ("target", pa.int32()),
        ("strength", pa.int32()),
        ("layer", pa.string()),
        ("order", pa.string()),
        ("k", pa.list_(pa.int32())),
        ("recovery", _flist()),
        ("q05", _flist()),
        ("q95", _flist()),
        ("summary", _flist()),
    ]
)

CLASSES_SCHEMA = pa.schema(
    [
        ("class_id", pa.int32()),
        ("wnid", pa.string()),
        ("name", pa.string()),
        ("n_images", pa.int32()),
        ("n_correct", pa.int32()),
        ("n_skipped", pa.int32()),
        ("accuracy", pa.float32()),
        ("n_as_original", pa.int32()),
        ("n_as_target", pa.int32()),
        ("success_as_original", _flist()),
        ("success_as_target", _flist()),
    ]
)

RANKING_SCHEMA = pa.schema([("original", pa.int32()), ("target", pa.int32()), ("value", pa.float32())])

OVERVIEW_SCHEMA = pa.schema([("strength", pa.int32()), ("original", pa.int32()), ("success", pa.binary())])

ATLAS_SCHEMA = pa.schema(
    [
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("n_displayed", pa.int32()),
        ("n_exploited_any", pa.int32()),
        ("n_exploited", pa.list_(pa.int32())),
        ("mean_effect", _flist()),
        ("n_tested", pa.int32()),
        ("mean_recovery", pa.float32()),
        ("null_percentile", pa.float32()),
        ("top_originals", pa.list_(pa.int32())),
        ("top_original_counts", pa.list_(pa.int32())),
        ("top_targets", pa.list_(pa.int32())),
        ("top_target_counts", pa.list_(pa.int32())),
    ]
)

#: Rows of pair_index/ are the unit markers' rows (same columns; ``original`` is the partition).
PAIR_INDEX_SCHEMA = PAIRS_SCHEMA


# --- writing --------------------------------------------------------------------------------------


class FooterTooLarge(ValueError):
    """A partition file's footer would not fit the viewer's first range request."""


def footer_size(data: bytes) -> int:
    """Length of a Parquet file's footer (the thrift FileMetaData), from its last 8 bytes."""
    if data[-4:] != b"PAR1":
        raise ValueError("not a Parquet file (no PAR1 trailer)")
    return int.from_bytes(data[-8:-4], "little")


def table_to_parquet(
    table: pa.Table,
    group_by: str | None = None,
    groups: Iterable[Any] | None = None,
    footer_limit: int | None = None,
    row_group_size: int | None = None,
    page_index: bool = False,
    data_page_size: int | None = None,
    metadata: dict[bytes, bytes] | None = None,
    metadata_in_schema: bool = True,
) -> bytes:
    """Serialise ``table`` to Parquet bytes (snappy; statistics on ``target`` only; page checksums).

    With ``group_by``, rows must be sorted by that column and each value in ``groups`` (in order)
    gets exactly one row group, empty when no row has that value, so a pair's row-group index is
    the same in the nodes, edges and causal files; such files are zstd without dictionaries
    (``PARTITION_OPTIONS``). ``footer_limit`` refuses a file whose footer
    would need a second range request. ``page_index`` (with a small ``data_page_size``) lets a
    reader fetch a range of rows of one big row group (the rankings). ``metadata_in_schema=False``
    writes ``metadata`` once, as the file's key-value metadata (``ParquetFile.metadata.metadata``),
    not also inside the embedded Arrow schema: unit markers carry theirs once.
    """
    if metadata and metadata_in_schema:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    stats = [c for c in STATISTICS_COLUMNS if c in table.schema.names] or False
    sink = pa.BufferOutputStream()
    kw: dict[str, Any] = dict(PARQUET_OPTIONS, write_statistics=stats, write_page_index=page_index)
    if group_by is not None:
        kw.update(PARTITION_OPTIONS)
    if data_page_size:
        kw["data_page_size"] = data_page_size
    with pq.ParquetWriter(sink, table.schema, **kw) as w:
        if group_by is None:
            w.write_table(table, row_group_size=row_group_size or max(1, table.num_rows))
        else:
            if groups is None:
                raise ValueError(f"group_by={group_by!r} needs groups (its values, one row group each, in order)")
            col = table.column(group_by).to_pylist()
            if col != sorted(col):
                raise ValueError(f"rows must be sorted by {group_by}")
            start = 0
            for g in groups:
                stop = start
                while stop < len(col) and col[stop] == g:
                    stop += 1
                part = table.slice(start, stop - start)
                w.write_table(part, row_group_size=max(1, part.num_rows))
                start = stop
            if start != len(col):
                raise ValueError(f"rows with {group_by} values not in groups: {sorted(set(col[start:]))}")
        if metadata and not metadata_in_schema:
            w.add_key_value_metadata(metadata)
    data = sink.getvalue().to_pybytes()
    if footer_limit is not None and footer_size(data) > footer_limit:
        raise FooterTooLarge(
            f"Parquet footer of {footer_size(data)} bytes exceeds {footer_limit} "
            "(too many row groups in one file: lower the targets per file)"
        )
    return data


def _footer_per_target(schema: pa.Schema, n_strengths: int) -> tuple[int, int]:
    """(fixed bytes, bytes per extra row group) of a partition file's footer for ``schema``."""
    sizes = []
    for n in (1, 3):
        rows = {f.name: _sample_column(f, n, n_strengths) for f in schema}
        t = pa.table(rows, schema=schema)
        sizes.append(footer_size(table_to_parquet(t, "target", list(range(n)))))
    per = (sizes[1] - sizes[0]) / 2
    return int(sizes[0] - per), int(per + 0.999)


def _sample_column(f: pa.Field, n: int, n_strengths: int) -> pa.Array:
    if f.name == "target":
        return pa.array(range(n), pa.int32())
    t = f.type
    if pa.types.is_list(t):
        return pa.array([[0.0] * n_strengths] * n, t)
    if pa.types.is_string(t):
        return pa.array(["mixed4e"] * n, t)  # the longest layer names are 7 characters
    return pa.array([0] * n, t)


def max_targets_per_file(n_strengths: int, limit: int = FOOTER_LIMIT) -> int:
    """Most targets (row groups) a nodes/edges/causal file can hold with its footer under ``limit``.

    Measured on the real schemas (footers grow linearly with the row groups; statistics only on
    ``target``), with 10 % to spare for longer strings in real files. ``limit`` is the nodes/causal
    cap; edges files get ``EDGES_FOOTER_LIMIT`` scaled alike.
    """
    worst = 1 << 30
    for schema, cap in (
        (NODES_SCHEMA, limit),
        (edges_schema(n_strengths), limit * EDGES_FOOTER_LIMIT // FOOTER_LIMIT),
        (CAUSAL_SCHEMA, limit),
        (CAUSAL_CURVE_SCHEMA, limit),
    ):
        fixed, per = _footer_per_target(schema, n_strengths)
        worst = min(worst, int((cap * 0.9 - fixed) // per))
    return max(1, worst)


def with_column(table: pa.Table, name: str, values: Sequence[Any], type_: pa.DataType) -> pa.Table:
    """``table`` with column ``name`` set to ``values`` (replaced if present, else appended)."""
    arr = pa.array(values, type_)
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, arr) if i >= 0 else table.append_column(pa.field(name, type_), arr)
