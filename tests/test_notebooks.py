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


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


def q(sql: str) -> list[tuple]:
    """Rows of a DuckDB query (an in-memory connection per query)."""
    return duckdb.connect().execute(sql).fetchall()


def nodes_sql(root: str) -> str:
    return f"read_parquet('{root}/nodes/*/*.parquet', hive_partitioning = true)"


@pytest.mark.ray  # demo_results runs the pipeline on the session's local Ray
def test_pair_tour(demo_results, tmp_path, monkeypatch):
    nb = execute("pair_tour.ipynb", demo_results, tmp_path, monkeypatch)
    got = json.loads((tmp_path / "pair_tour.json").read_text())
    # default pair: most exploited neurons, ties by lower ids
    o, t = q(
        f"SELECT original, target FROM read_parquet('{demo_results}/pair_index.parquet') "
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
    rate = q(
        f"SELECT success_rate FROM read_parquet('{demo_results}/pair_index.parquet') WHERE original = {o} AND target = {t}"
    )[0][0]
    assert got["success_rate"] == pytest.approx(rate)
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
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2


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
    execute("thousand_cuts.ipynb", demo_results, tmp_path, monkeypatch)
    strengths = json.loads(Path(demo_results, "manifest.json").read_text())["strengths"]
    weak, strong = thousand_cuts_sql(demo_results, 1), thousand_cuts_sql(demo_results, len(strengths) - 1)
    both = sorted(set(weak) & set(strong))
    with open(tmp_path / "thousand_cuts_counts.csv") as f:
        got = {(int(r["original"]), int(r["target"])): (int(r["weak"]), int(r["strong"])) for r in csv.DictReader(f)}
    assert got == {p: (weak[p], strong[p]) for p in both}
    assert got, "the demo should have pairs with successful attacks at both strengths"
    summary = json.loads((tmp_path / "thousand_cuts_summary.json").read_text())
    n_pairs = q(f"SELECT count(*) FROM read_parquet('{demo_results}/pair_index.parquet')")[0][0]
    assert summary["pairs_compared"] == len(both)
    assert summary["pairs_excluded"] == n_pairs - len(both)
    assert summary["weak_more"] == sum(weak[p] > strong[p] for p in both)
    assert summary["weak_eps"] == strengths[1] and summary["strong_eps"] == strengths[-1]
    with open(tmp_path / "thousand_cuts_curve.csv") as f:
        curve = list(csv.DictReader(f))
    assert len(curve) == len(strengths)
    for i, row in enumerate(curve):
        per_pair = thousand_cuts_sql(demo_results, i)
        assert int(row["pairs"]) == len(per_pair)
        if per_pair:
            assert float(row["mean"]) == pytest.approx(sum(per_pair.values()) / len(per_pair))
        else:
            assert math.isnan(float(row["mean"]))


def test_notebook_reports_missing_results(tmp_path, monkeypatch):
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match="no results at"):
        execute("pair_tour.ipynb", str(tmp_path / "nothing"), tmp_path, monkeypatch)
