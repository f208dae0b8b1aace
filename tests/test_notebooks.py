"""The research notebooks run on real results, and what they compute equals a direct DuckDB query."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import duckdb
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL_NOTEBOOKS = ["pair_tour.ipynb", "thousand_cuts.ipynb", "causal.ipynb"]


def execute(name: str, results: str, out: Path, monkeypatch, **env) -> nbformat.NotebookNode:
    """Run a notebook with the venv's kernel; the kernel inherits BLUFF_* from this process."""
    monkeypatch.setenv("BLUFF_RESULTS", results)
    monkeypatch.setenv("BLUFF_NOTEBOOK_OUT", str(out))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend captures the figures
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def figures(nb: nbformat.NotebookNode) -> int:
    """PNG figures among the executed notebook's outputs."""
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_notebooks_are_committed_without_outputs():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(ALL_NOTEBOOKS)
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


def q(sql: str) -> list[tuple]:
    """Rows of a DuckDB query (an in-memory connection per query)."""
    return duckdb.connect().execute(sql).fetchall()


def table_sql(root: str, name: str) -> str:
    """A hive-partitioned table of a schema-2 root (pair_index, nodes, edges, causal), `original` from the path."""
    return f"read_parquet('{root}/{name}/*/*.parquet', hive_partitioning = true)"


def nodes_sql(root: str) -> str:
    return table_sql(root, "nodes")


def manifest(root: str) -> dict:
    return json.loads(Path(root, "manifest.json").read_text())


@pytest.mark.ray  # demo_results runs the pipeline on the session's local Ray
def test_pair_tour(demo_results, tmp_path, monkeypatch):
    nb = execute("pair_tour.ipynb", demo_results, tmp_path, monkeypatch)
    got = json.loads((tmp_path / "pair_tour.json").read_text())
    # default pair: most exploited neurons, ties by lower ids
    o, t = q(
        f"SELECT original, target FROM {table_sql(demo_results, 'pair_index')} "
        "ORDER BY n_exploited DESC, original, target LIMIT 1"
    )[0]
    assert (got["original"], got["target"]) == (o, t)
    rows = q(
        f"SELECT layer, role, count(*) FROM {nodes_sql(demo_results)} "
        f"WHERE original = {o} AND target = {t} GROUP BY ALL"
    )
    want = {(layer, role): n for layer, role, n in rows}
    shown = {(layer, role): n for layer, d in got["roles"].items() for role, n in d.items() if n}
    assert shown == want
    rate = q(f"SELECT success_rate FROM {table_sql(demo_results, 'pair_index')} WHERE original = {o} AND target = {t}")[
        0
    ][0]
    assert got["success_rate"] == pytest.approx(rate, nan_ok=True)
    # top exploited by max excitation over the strengths with a successful attack
    top = q(
        f"""SELECT layer, channel, list_max(list_filter(list_transform(importance_attacked, lambda x: x - importance_original),
                                                      lambda x: NOT isnan(x))) AS e
            FROM {nodes_sql(demo_results)} WHERE original = {o} AND target = {t} AND role = 'exploited'
            ORDER BY e DESC, layer, channel LIMIT 10"""
    )
    assert [(l, c) for l, c, _ in got["top_exploited"]] == [(l, c) for l, c, _ in top]
    assert [e for *_, e in got["top_exploited"]] == pytest.approx([e for *_, e in top], rel=1e-6)
    # the executed notebook drew its figures
    assert figures(nb) >= 2


def thousand_cuts_sql(root: str, i: int, percent: int = 30) -> dict[tuple[int, int], int]:
    """Per pair: exploited neurons among the floor(n * percent / 100) most activated displayed neurons of each
    layer at strength index i (1-based list index i + 1 in SQL); pairs with a NaN importance are left out."""
    rows = q(
        f"""
        WITH n AS (
            SELECT original, target, layer, channel, role, importance_attacked[{i + 1}] AS imp FROM {nodes_sql(root)}
        ), valid AS (
            SELECT original, target FROM n GROUP BY original, target HAVING bool_and(NOT isnan(imp))
        ), ranked AS (
            SELECT n.*,
                   row_number() OVER (PARTITION BY n.original, n.target, layer ORDER BY imp DESC, channel) - 1 AS pos,
                   count(*) OVER (PARTITION BY n.original, n.target, layer) AS n_layer
            FROM n JOIN valid USING (original, target)
        )
        SELECT original, target, sum(CASE WHEN pos < (n_layer * {percent}) // 100 AND role = 'exploited' THEN 1 ELSE 0 END)
        FROM ranked GROUP BY original, target
        """
    )
    return {(o, t): int(n) for o, t, n in rows}


@pytest.mark.ray
def test_thousand_cuts(demo_results, tmp_path, monkeypatch):
    strengths = manifest(demo_results)["strengths"]
    # The notebook's default weaker strength (the 2nd smallest, the paper's choice) has no successful attack on the
    # small demo; BLUFF_WEAK picks the weakest strength at which at least half of the pairs have one.
    with_success = q(
        f"SELECT i, count(*) FILTER (WHERE n_success[i + 1] > 0), count(*) "
        f"FROM {table_sql(demo_results, 'pair_index')}, range({len(strengths)}) t(i) GROUP BY i ORDER BY i"
    )
    weak_i = min(i for i, n, total in with_success if 2 * n >= total)
    assert 0 < weak_i < len(strengths) - 1
    nb = execute("thousand_cuts.ipynb", demo_results, tmp_path, monkeypatch, BLUFF_WEAK=str(strengths[weak_i]))
    weak, strong = thousand_cuts_sql(demo_results, weak_i), thousand_cuts_sql(demo_results, len(strengths) - 1)
    both = sorted(set(weak) & set(strong))
    with open(tmp_path / "thousand_cuts_counts.csv") as f:
        got = {(int(r["original"]), int(r["target"])): (int(r["weak"]), int(r["strong"])) for r in csv.DictReader(f)}
    assert got == {p: (weak[p], strong[p]) for p in both}
    assert got, "the demo should have pairs with successful attacks at both strengths"
    summary = json.loads((tmp_path / "thousand_cuts_summary.json").read_text())
    n_pairs = q(f"SELECT count(*) FROM {table_sql(demo_results, 'pair_index')}")[0][0]
    assert summary["pairs_compared"] == len(both)
    assert summary["pairs_excluded"] == n_pairs - len(both)
    assert summary["weak_more"] == sum(weak[p] > strong[p] for p in both)
    assert summary["weak_eps"] == strengths[weak_i] and summary["strong_eps"] == strengths[-1]
    with open(tmp_path / "thousand_cuts_curve.csv") as f:
        curve = list(csv.DictReader(f))
    assert len(curve) == len(strengths)
    for i, row in enumerate(curve):
        per_pair = thousand_cuts_sql(demo_results, i)
        assert int(row["pairs"]) == len(per_pair)
        if per_pair:
            assert float(row["mean"]) == pytest.approx(sum(per_pair.values()) / len(per_pair))
        else:
            assert row["mean"] == ""  # pandas writes NaN as an empty CSV field
    assert figures(nb) >= 2


def nan_to_none(values) -> list:
    return [None if v is None or math.isnan(v) else v for v in values]


def exploited_counts_from_nodes(root: str, n_strengths: int) -> dict[tuple[str, int], tuple[int, list[int]]]:
    """Per neuron, from the nodes/ files alone: pairs where its role is `exploited`, and per strength the pairs
    with `exploited_mask` bit i set."""
    per_bit = q(
        f"""SELECT layer, channel, i, count(*) FILTER (WHERE (exploited_mask >> i) & 1 = 1)
            FROM {nodes_sql(root)}, range({n_strengths}) t(i) WHERE role = 'exploited' GROUP BY ALL"""
    )
    any_ = q(f"SELECT layer, channel, count(*) FROM {nodes_sql(root)} WHERE role = 'exploited' GROUP BY ALL")
    out = {(l, c): (n, [0] * n_strengths) for l, c, n in any_}
    for l, c, i, n in per_bit:
        out[(l, c)][1][i] = n
    return out


@pytest.mark.ray
def test_causal(demo_results, tmp_path, monkeypatch):
    # an fsspec URL rather than a plain path: the notebook reads every file through fsspec
    nb = execute("causal.ipynb", "file://" + demo_results, tmp_path, monkeypatch)
    check_causal(json.loads((tmp_path / "causal.json").read_text()), demo_results)
    assert figures(nb) >= 1  # the dose-response curves


@pytest.mark.ray
@pytest.mark.s3
def test_causal_on_s3(demo_results, s3_endpoint, make_bucket, s3_options, tmp_path, monkeypatch):
    """The same numbers from a copy of the root on S3 (the moto server; the kernel finds it via AWS_ENDPOINT_URL)."""
    import s3fs

    bucket = make_bucket("notebook-results")
    s3fs.S3FileSystem(client_kwargs=s3_options).put(demo_results + "/", f"{bucket}/root/", recursive=True)
    nb = execute("causal.ipynb", f"s3://{bucket}/root", tmp_path, monkeypatch, AWS_ENDPOINT_URL=s3_endpoint)
    check_causal(json.loads((tmp_path / "causal.json").read_text()), demo_results)
    assert figures(nb) >= 1


def check_causal(got: dict, demo_results: str) -> None:
    """causal.json equals direct DuckDB queries over the local root's Parquet files."""
    m = manifest(demo_results)
    causal = table_sql(demo_results, "causal")
    assert got["n_rows"] == q(f"SELECT count(*) FROM {causal}")[0][0] > 0
    assert got["n_curves"] == q(f"SELECT count(*) FROM {table_sql(demo_results, 'causal_curve')}")[0][0] > 0
    # per (layer, strength): the image-weighted mean recovery of the exploited set and of its null
    want = {
        (l, m["strengths"][s]): (r, n)
        for l, s, r, n in q(
            f"""SELECT layer, strength, sum(recovery[2] * recovery[1]) / sum(recovery[1]),
                   sum(null_stats[1] * recovery[1]) / sum(recovery[1])
            FROM {causal} WHERE set = 'exploited' AND NOT isnan(recovery[2]) GROUP BY ALL"""
        )
    }
    assert len(got["table"]) == len(want)
    for row in got["table"]:
        r, n = want[(row["layer"], row["eps"])]
        assert row["R_set"] == pytest.approx(r, rel=1e-5) and row["R_null"] == pytest.approx(n, rel=1e-5)
    assert got["verdict"].startswith(("supported", "no more than chance", "worse than chance"))


def write_version_1_root(path: Path) -> Path:
    """A minimal root as bluff_ray 0.1 wrote it: manifest with schema_version 1 and one pair_index.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"schema_version": 1, "strengths": [0.1, 0.2], "layers": []}))
    pq.write_table(pa.table({"original": [0], "target": [1]}), path / "pair_index.parquet")
    return path


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebook_refuses_schema_version_1(name, tmp_path, monkeypatch):
    from nbclient.exceptions import CellExecutionError

    root = write_version_1_root(tmp_path / "v1")
    with pytest.raises(CellExecutionError, match="schema version 1") as err:
        execute(name, str(root), tmp_path, monkeypatch)
    assert "--overwrite" in str(err.value)


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_notebook_reports_missing_results(name, tmp_path, monkeypatch):
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match="no results at"):
        execute(name, str(tmp_path / "nothing"), tmp_path, monkeypatch)
