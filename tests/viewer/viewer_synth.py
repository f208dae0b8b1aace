"""A small results root that follows docs/FORMAT.md, made without the pipeline.

Why: the viewer and server tests need data with known properties the real pipeline cannot
promise on a 3-class digits run: a class name that looks like HTML (must render as text), a
strength where no attack succeeded (NaN), several layers with every role, and neuron images.
Values are random but seeded; everything is written with the project's own Parquet writer
(``bluff_ray.store.table_to_parquet``: snappy, one row group per target).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from bluff_ray.pathways import EDGES_SCHEMA, NODES_SCHEMA, PAIRS_SCHEMA
from bluff_ray.store import table_to_parquet

LAYERS = ["mixed3a", "mixed3b", "mixed4a", "mixed4b"]
CHANNELS = 64
STRENGTHS = [round(0.05 * i, 2) for i in range(1, 11)]
K = 6
CLASS_NAMES = ["zero", "one", "<b>two</b> & co", "three"]


def _png(rng: np.random.Generator, size: int) -> bytes:
    arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _pair(rng: np.random.Generator, o: int, t: int) -> tuple[list[dict], list[dict], list[int], int]:
    S = len(STRENGTHS)
    n_images = 12
    bias = 0.03 * ((o * 7 + t * 3) % 5)  # pairs differ in how easily they are attacked
    n_success = [int(min(n_images, round(n_images * (0.08 * i + 0.05 + bias)))) for i in range(S)]
    if (o + t) % 2 == 0:
        n_success[0] = 0  # no success at the weakest strength: NaN attacked values
    nodes: list[dict] = []
    for li, layer in enumerate(LAYERS):
        chans = rng.permutation(CHANNELS)
        counts = {"original": int(rng.integers(2, K)), "both": int(rng.integers(1, K // 2 + 1)),
                  "target": int(rng.integers(2, K)), "exploited": int(rng.integers(2, K + 3))}
        i = 0
        for role in ("original", "both", "target", "exploited"):
            for _ in range(counts[role]):
                c = int(chans[i])
                i += 1
                base = float(rng.gamma(2.0, 1.0))
                drift = float(rng.normal(0.0, 0.6))
                att = [base + drift * (s + 1) / S + float(rng.normal(0, 0.1)) for s in range(S)]
                att = [max(0.0, a) if n_success[s] else math.nan for s, a in enumerate(att)]
                nodes.append(dict(target=t, layer=layer, channel=c, role=role, importance_original=base,
                                  importance_target=float(rng.gamma(2.0, 1.0)), importance_attacked=att))
    edges: list[dict] = []
    for li in range(1, len(LAYERS)):
        lo = [n for n in nodes if n["layer"] == LAYERS[li - 1]]
        hi = [n for n in nodes if n["layer"] == LAYERS[li]]
        for d in hi:
            for s_ in lo:
                vals = rng.normal(0.3, 0.5, size=S + 2)
                att = [float(v) if n_success[i] else math.nan for i, v in enumerate(vals[2:])]
                if not any(v > 0 for v in [float(vals[0]), float(vals[1]), *att]):
                    continue  # FORMAT: only edges positive in at least one condition
                edges.append(dict(target=t, src_layer=s_["layer"], src_channel=s_["channel"], dst_layer=d["layer"],
                                  dst_channel=d["channel"], influence_original=float(vals[0]),
                                  influence_target=float(vals[1]), influence_attacked=att))
    return nodes, edges, n_success, n_images


PART_SCHEMA = pa.schema(list(PAIRS_SCHEMA) + [pa.field("part", pa.int32())])


def make_results(root: str | Path, seed: int = 0, classes: int = 4, assets: bool = True,
                 target_chunk: int | None = None) -> Path:
    """Write a complete results root (all ordered pairs of ``classes`` classes) under ``root``.

    ``target_chunk`` splits each original's targets into ``part-<j>`` files as the pipeline does.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    pair_rows = []
    shown: set[tuple[str, int]] = set()
    for o in range(classes):
        all_targets = [t for t in range(classes) if t != o]
        chunk = target_chunk or len(all_targets)
        for j in range(0, len(all_targets), chunk):
            targets = all_targets[j:j + chunk]
            part = j // chunk
            all_nodes, all_edges, prow = [], [], []
            for rg, t in enumerate(targets):
                nodes, edges, n_success, n_images = _pair(rng, o, t)
                all_nodes += nodes
                all_edges += edges
                shown |= {(n["layer"], n["channel"]) for n in nodes}
                prow.append(dict(target=t, n_images=n_images, n_success=n_success,
                                 success_rate=[s / n_images for s in n_success], n_nodes=len(nodes),
                                 n_edges=len(edges), n_exploited=sum(n["role"] == "exploited" for n in nodes),
                                 row_group=rg, part=part))
            for name, rows, schema in (("nodes", all_nodes, NODES_SCHEMA), ("edges", all_edges, EDGES_SCHEMA)):
                path = root / name / f"original={o}" / f"part-{part}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(table_to_parquet(pa.Table.from_pylist(rows, schema=schema), "target", targets))
            path = root / "pairs" / f"original={o}" / f"part-{part}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(table_to_parquet(pa.Table.from_pylist(prow, schema=PART_SCHEMA)))
            pair_rows += [dict(original=o, **r) for r in prow]
    index_schema = pa.schema([pa.field("original", pa.int32())] + list(PART_SCHEMA))
    (root / "pair_index.parquet").write_bytes(table_to_parquet(pa.Table.from_pylist(pair_rows, schema=index_schema)))
    classes_t = pa.table({
        "class_id": pa.array(range(classes), pa.int32()),
        "wnid": pa.array([str(i) for i in range(classes)]),
        "name": pa.array([CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"class {i}" for i in range(classes)]),
        "n_images": pa.array([12] * classes, pa.int32()),
        "n_skipped": pa.array([0] * classes, pa.int32()),
        "accuracy": pa.array([0.9] * classes, pa.float32()),
    })
    (root / "classes.parquet").write_bytes(table_to_parquet(classes_t))
    if assets:
        rows = []
        for layer, ch in sorted(shown):
            fv = f"neurons/feature_vis/{layer}/{ch}.png"
            (root / fv).parent.mkdir(parents=True, exist_ok=True)
            (root / fv).write_bytes(_png(rng, 32))
            rows.append(dict(layer=layer, channel=ch, kind="feature_vis", rank=0, path=fv, class_id=-1,
                             image_index=-1, activation=1.0))
            for r in range(4):
                p = f"neurons/patches/{layer}/{ch}-{r}.png"
                (root / p).parent.mkdir(parents=True, exist_ok=True)
                (root / p).write_bytes(_png(rng, 12))
                rows.append(dict(layer=layer, channel=ch, kind="patch", rank=r, path=p, class_id=r % classes,
                                 image_index=r, activation=float(4 - r)))
        schema = pa.schema([("layer", pa.string()), ("channel", pa.int32()), ("kind", pa.string()),
                            ("rank", pa.int32()), ("path", pa.string()), ("class_id", pa.int32()),
                            ("image_index", pa.int32()), ("activation", pa.float32())])
        (root / "neurons").mkdir(exist_ok=True)
        (root / "neurons" / "index.parquet").write_bytes(table_to_parquet(pa.Table.from_pylist(rows, schema=schema)))
    manifest = {
        "schema_version": 1,
        "model": {"name": "synthetic", "input_shape": [1, 8, 8], "input_space": "pixels in [0,1]", "metadata": {}},
        "layers": [{"name": n, "channels": CHANNELS, "branch_sizes": [16, 16, 16, 16], "bottleneck_sizes": [8, 8]}
                   for n in LAYERS],
        "attack": {"method": "pgd_l2", "steps": 50, "step_ratio": 0.2, "random_start": True, "seed": 0},
        "strengths": STRENGTHS,
        "input_space": "pixels in [0,1]; eps is the L2 norm of the perturbation",
        "k": K,
        "images_per_class": 12,
        "config_hash": "synthetic",
        "classes": classes,
        "pairs_total": classes * (classes - 1),
        "versions": {},
        "created": "2026-01-01T00:00:00Z",
        "finished": "2026-01-01T00:00:00Z",
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def read_pair(root: str | Path, original: int, target: int) -> tuple[dict, list[dict], list[dict]]:
    """(pair_index row, nodes, edges) of one pair, read with pyarrow (the tests' independent reader)."""
    root = Path(root)
    idx = pq.read_table(root / "pair_index.parquet").to_pylist()
    row = next(r for r in idx if r["original"] == original and r["target"] == target)
    part = f"part-{row['part']}.parquet"
    nodes = pq.read_table(root / "nodes" / f"original={original}" / part).to_pylist()
    edges = pq.read_table(root / "edges" / f"original={original}" / part).to_pylist()
    return row, [n for n in nodes if n["target"] == target], [e for e in edges if e["target"] == target]
