"""Growing roots: runs over different (disjoint or overlapping) selections into one root add to it,
and the root then equals one run over the union of the selections, table for table; a pair's
numbers do not depend on which other pairs were selected."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

from bluff_ray.results import layout
from bluff_ray.results.store import Store
from bluff_ray.run.config import RunConfig
from bluff_ray.run.driver import RunError, run

pytestmark = pytest.mark.ray

ALL = ["0:1", "0:2", "1:0", "1:2", "2:0", "2:1"]


def cfg(out, pairs, **kw) -> RunConfig:
    base = RunConfig()
    values = dict(
        out=str(out),
        pairs=pairs,
        images_per_class=6,
        target_chunk=2,
        progress=False,
        num_workers=1,
        attack=dataclasses.replace(base.attack, steps=2),
        assets=dataclasses.replace(base.assets, enabled=False),
    )
    values.update(kw)
    return RunConfig(**values)


def tables(root) -> dict[str, object]:
    s = Store(str(root))
    s.refresh()
    return {
        rel: pq.read_table(f"{root}/{rel}").replace_schema_metadata(None)
        for rel in s.list()
        if rel.endswith(".parquet")
    }


def _plain(table) -> list:
    """Rows with NaN as None (NaN != NaN would make equal tables differ)."""

    def fix(v):
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    return [fix(r) for r in table.to_pylist()]


def test_two_runs_over_overlapping_halves_equal_one_run_over_all(ray_session, tmp_path):
    grown, one = tmp_path / "grown", tmp_path / "one"
    # units are target ranges of 2: (2, 0) holds target 0 after the first run, targets 0 and 1
    # after the second (which asks for 2:1 and again for 2:0)
    first = run(cfg(grown, ["0:1", "1:2", "2:0"]))
    assert first.pairs_written == 3 and not first.failed
    alone = pq.read_table(grown / layout.part_path("nodes", 2, 0))
    with pytest.raises(RunError, match="target_chunk"):
        run(cfg(grown, ["0:2"], target_chunk=3))
    second = run(cfg(grown, ["0:2", "1:0", "2:1", "2:0"]))
    assert not second.failed and second.pairs_skipped == 0 and second.pairs_written == 4  # (2, 0) redone whole
    assert run(cfg(one, ALL)).pairs_written == 6

    a, b = tables(grown), tables(one)
    assert sorted(a) == sorted(b)
    for rel in a:
        assert _plain(a[rel]) == _plain(b[rel]), rel
    for root in (grown, one):
        m = Store(str(root)).read_json(layout.MANIFEST_PATH)
        assert m["finished"] and m["pairs_done"] == m["pairs_total"] == 6 and m["targets_per_file"] == 2
    idx = pq.read_table(grown / layout.pair_index_path(2))
    assert idx.column("target").to_pylist() == [0, 1]

    # pair (2, 0) computed alone in the first run and beside (2, 1) afterwards: the same numbers
    # (float32 sums over differently composed batches: a measured margin below 1e-5 relative)
    together = pq.read_table(grown / layout.part_path("nodes", 2, 0))
    together = together.filter(
        pq.ParquetFile(grown / layout.part_path("nodes", 2, 0)).read().column("target").to_numpy() == 0
    )
    assert alone.num_rows == together.num_rows > 0
    for name in alone.column_names:
        x, y = alone.column(name).to_pylist(), together.column(name).to_pylist()
        if isinstance(x[0], (float, list)):
            np.testing.assert_allclose(np.array(x, float), np.array(y, float), rtol=1e-5, atol=1e-7, err_msg=name)
        else:
            assert x == y, name

    again = run(cfg(grown, ["0:1", "2:1"]))  # a selection inside the root: nothing to do, nothing started
    assert again.pairs_written == 0 and again.pairs_skipped == 2 and again.workers == 0


def test_per_pair_start_noise_does_not_depend_on_the_other_targets_or_the_batches():
    from bluff_ray.engine.attack import PairStartNoise, StartNoise

    shape, per = (1, 8, 8), 37
    seeds = [11, 12, 13]
    noise = PairStartNoise(seeds, "pgd_l2", shape, per)
    whole = noise.get(0, 3 * per)
    pieces = __import__("torch").cat([noise.get(lo, min(lo + 10, 3 * per)) for lo in range(0, 3 * per, 10)])
    assert (whole == pieces).all()
    for t, seed in enumerate(seeds):
        alone = StartNoise(seed, "pgd_l2", shape, per).get(0, per)  # the target as the loop's only one
        assert (whole[t * per : (t + 1) * per] == alone).all()
