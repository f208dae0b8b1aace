"""Results roots that follow docs/FORMAT.md (the current schema version), made without the pipeline.

Why: the viewer and server tests need data with known properties the real pipeline cannot
promise on a 3-class digits run: a class name that looks like HTML (must render as text), a long
class name, a class that was never computed as an original, a strength where no attack succeeded
(NaN), several layers with every role, neuron images, and a 1000-class root (999,000 pairs).

Causal data (docs/FORMAT.md causal/, nodes.effect, pairs.defused): NaN wherever no attack
succeeded; in the small root every pair has one layer without exploited neurons (layer
``target % 4``: its causal row has ``n_exploited = 0`` and NaN fractions) and the pair
``NO_EXPLOITED`` has none at all (every causal row NaN, ``n_exploited = 0``). ``causal=False``
writes a root as a run without activation patching does: ``manifest.causal = false``, empty
causal files, NaN effects and defused fractions.

Everything is written with the project's own writers: ``bluff_ray.results.layout`` (schemas,
``table_to_parquet`` with one row group per target for nodes/edges/causal) and ``bluff_ray.results.reduce``
(``Aggregate.add_unit`` per work unit, then ``write_global`` for pair_index/, rankings/, overview/,
atlas/ and classes.parquet). Values are random but seeded.

Pair rows are generated with numpy, one original at a time. Nodes, edges and causal rows are
generated only for the pairs in ``with_files`` (default: every pair); in the other pairs' units
those pairs have an empty row group, and units without any such pair get no files at all (and no
``pairs/`` commit marker), so a 1000-class root builds in seconds. The global files always hold
every pair.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from bluff_ray.results import layout
from bluff_ray.results.reduce import Aggregate, LayerSpec, landing_view, unit_atlas, write_global
from bluff_ray.results.store import Store
from bluff_ray.run.assets import INDEX_SCHEMA

LAYERS = ["mixed3a", "mixed3b", "mixed4a", "mixed4b"]
CHANNELS = 64
STRENGTHS = [round(0.05 * i, 2) for i in range(1, 11)]
K = 6
#: The small root's classes: an HTML-looking name, and (class 4) a long name of a class that is
#: only ever a target (never computed as an original).
CLASS_NAMES = [
    "zero",
    "one",
    "<b>two</b> & co",
    "three",
    "four, a class with a remarkably long name that cannot fit above its column",
]
#: pairs of the 1000-class test root with nodes/edges/causal files (besides the landing pair)
SCALE_PAIRS = {(500, 250), (999, 0), (3, 998)}
#: the small root's pair without any exploited neuron
NO_EXPLOITED = (1, 4)
_WORDS = [
    "red",
    "blue",
    "spotted",
    "great",
    "lesser",
    "common",
    "giant",
    "pygmy",
    "golden",
    "silver",
    "northern",
    "desert",
    "mountain",
    "river",
    "sea",
    "crested",
    "striped",
    "horned",
    "long-tailed",
    "white",
]
_NOUNS = [
    "fox",
    "heron",
    "beetle",
    "shark",
    "warbler",
    "lizard",
    "moth",
    "owl",
    "frog",
    "crab",
    "snail",
    "finch",
    "salamander",
    "eel",
    "parrot",
    "toad",
    "wasp",
    "seal",
    "gecko",
    "tern",
]


def scale_names(n: int) -> list[str]:
    """n distinct, name-like class names (a few very long ones, as ImageNet has)."""
    out = []
    for i in range(n):
        a, b, c = _WORDS[i % 20], _WORDS[(i // 20) % 20], _NOUNS[(i // 400 + i) % 20]
        name = f"{a} {b} {c} {i}"
        if i % 97 == 5:
            name += ", also known as the " + " ".join(_WORDS[(i + k) % 20] for k in range(6)) + " " + c
        out.append(name)
    return out


def _png(rng: np.random.Generator, size: int) -> bytes:
    arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _list_array(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """An [n, w] numpy array as a list<...> Arrow array (NaN stays NaN)."""
    n, w = values.shape
    offsets = pa.array(np.arange(0, n * w + 1, w, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type_.value_type))


# --- pair rows (vectorised) -------------------------------------------------------------------------


def _pair_rows(
    rng: np.random.Generator, o: int, targets: np.ndarray, n_images: int, small: bool, ease: np.ndarray | None = None
) -> dict:
    """Per target: n_success [T, S], n_exploited, n_nodes, n_edges (before any files are made)."""
    S = len(STRENGTHS)
    T = len(targets)
    i = np.arange(S)[None, :]
    if small:
        bias = 0.03 * ((o * 7 + targets * 3) % 5)  # pairs differ in how easily they are attacked
        n_success = np.minimum(n_images, np.rint(n_images * (0.08 * i + 0.05 + bias[:, None]))).astype(np.int32)
    else:
        # how easily o is attacked and t is reached (class effects: the heatmap has rows and columns)
        difficulty = ease[0][o] + ease[1][targets] + rng.uniform(-0.25, 0.15, T)
        p = np.clip(0.09 * i - 0.1 + difficulty[:, None] + rng.normal(0, 0.03, (T, S)), 0, 1)
        n_success = np.rint(n_images * p).astype(np.int32)
    n_success[(o + targets) % 2 == 0, 0] = 0  # no success at the weakest strength: NaN attacked values
    return {
        "n_success": n_success,
        "n_exploited": rng.integers(0, 30, T).astype(np.int32),
        "n_nodes": rng.integers(30, 80, T).astype(np.int32),
        "n_edges": rng.integers(200, 2000, T).astype(np.int32),
    }


# --- one pair's nodes, edges and causal rows ---------------------------------------------------------


def _pair_tables(
    rng: np.random.Generator,
    t: int,
    n_success: np.ndarray,
    n_exploited: int | None,
    causal: bool = True,
    no_exploited: bool = False,
) -> tuple[list[dict], list[dict], list[dict], list[float]]:
    S = len(STRENGTHS)
    ok = n_success > 0
    if n_exploited is None:
        ex_counts = [int(rng.integers(2, K + 3)) for _ in LAYERS]
        ex_counts[t % len(LAYERS)] = 0  # one layer without exploited neurons
        if no_exploited:
            ex_counts = [0] * len(LAYERS)
    else:  # spread the pair row's exploited count over the layers
        ex_counts = np.bincount(rng.integers(0, len(LAYERS), int(n_exploited)), minlength=len(LAYERS)).tolist()
    nodes: list[dict] = []
    for li, layer in enumerate(LAYERS):
        chans = rng.permutation(CHANNELS)
        counts = {
            "original": int(rng.integers(2, K)),
            "both": int(rng.integers(1, K // 2 + 1)),
            "target": int(rng.integers(2, K)),
            "exploited": min(ex_counts[li], CHANNELS - 3 * K),
        }
        i = 0
        for role in ("original", "both", "target", "exploited"):
            picked = sorted(int(c) for c in chans[i : i + counts[role]])
            i += counts[role]
            for c in picked:
                base = float(rng.gamma(2.0, 1.0))
                drift = float(rng.normal(0.0, 0.6))
                att = [
                    max(0.0, base + drift * (s + 1) / S + float(rng.normal(0, 0.1))) if ok[s] else math.nan
                    for s in range(S)
                ]
                mask, effect = 0, [math.nan] * S
                if role == "exploited":
                    bits = [s for s in range(S) if ok[s] and rng.random() < 0.5] or [
                        int(np.argmax(ok)) if ok.any() else 0
                    ]
                    mask = sum(1 << s for s in bits)
                    effect = [float(rng.random()) if ok[s] and causal else math.nan for s in range(S)]
                nodes.append(
                    dict(
                        target=t,
                        layer=layer,
                        channel=c,
                        role=role,
                        importance_original=base,
                        importance_target=float(rng.gamma(2.0, 1.0)),
                        importance_attacked=att,
                        exploited_mask=mask,
                        effect=effect,
                    )
                )
    edges: list[dict] = []
    for li in range(1, len(LAYERS)):
        lo = [n for n in nodes if n["layer"] == LAYERS[li - 1]]
        hi = [n for n in nodes if n["layer"] == LAYERS[li]]
        vals = rng.normal(0.3, 0.5, size=(len(hi), len(lo), S + 2))
        for a, d in enumerate(hi):  # FORMAT order: destination neuron, then source neuron (node order)
            for b, s_ in enumerate(lo):
                v = layout.round_influence(vals[a, b])  # stored with 8 significant bits (FORMAT.md Precision)
                att = [float(x) if ok[i] else math.nan for i, x in enumerate(v[2:])]
                if not any(x > 0 for x in [float(v[0]), float(v[1]), *att]):
                    continue  # FORMAT: only edges positive in at least one condition
                edges.append(
                    dict(
                        target=t,
                        src_layer=s_["layer"],
                        src_channel=s_["channel"],
                        dst_layer=d["layer"],
                        dst_channel=d["channel"],
                        influence_original=float(v[0]),
                        influence_target=float(v[1]),
                        **{layout.influence_column(i): x for i, x in enumerate(att)},
                    )
                )
    causal_rows, curve_rows = _causal_rows(rng, t, nodes, ok, causal)
    defused = [math.nan] * S
    for r in causal_rows:
        if r["layer"] == "all" and r["set"] == "exploited":
            defused[r["strength"]] = r["recovery"][4]
    return nodes, edges, (causal_rows, curve_rows) if causal else ([], []), defused


CAUSAL_SETS = ("exploited", "exploited_union", "top_original_target", "top_delta")


def _causal_rows(
    rng: np.random.Generator, t: int, nodes: list[dict], ok: np.ndarray, causal: bool
) -> tuple[list[dict], list[dict]]:
    """FORMAT.md causal/ and causal_curve/ rows: per strength with a success and layer with exploited
    neurons, the four sets (random numbers, but the statistics' shapes and ranges are the real ones)."""
    if not causal:
        return [], []
    S, rows, curves = len(STRENGTHS), [], []
    counts = {l: sum(n["layer"] == l and n["role"] == "exploited" for n in nodes) for l in LAYERS}
    for s in range(S):
        if not ok[s]:
            continue
        n_img = int(rng.integers(1, 9))
        for layer in LAYERS + ["all"]:
            n = sum(counts.values()) if layer == "all" else counts[layer]
            if n == 0:
                continue
            null = sorted(float(x) for x in rng.uniform(-0.05, 0.4, 16))
            for name in CAUSAL_SETS:
                r = float(rng.uniform(-0.05, 0.9))
                primary = name == "exploited"
                pctl = 100.0 * (sum(x < r for x in null) + 0.5 * sum(x == r for x in null)) / 16
                p = (1 + sum(x >= r for x in null)) / 17
                nan = math.nan
                rows.append(
                    dict(
                        target=t,
                        strength=s,
                        layer=layer,
                        set=name,
                        n_neurons=n,
                        recovery=[n_img, r, r, float(rng.random()), float(rng.random()), 5.0, -2.0],
                        null_stats=[float(np.mean(null)), float(np.std(null, ddof=1)), null[0], null[-1], pctl, p, 16]
                        if primary
                        else [nan] * 6 + [16],
                        matched=[float(np.mean(null)), null[-1], pctl, p] if primary else [nan] * 4,
                        noising=[r, float(np.mean(null)), null[-1], pctl, p] if primary else [nan] * 5,
                    )
                )
    best = int(np.argmax(ok)) if ok.any() else -1
    for s in range(S - 1, -1, -1):  # the curve strength: the strongest with a success (synthetic)
        if ok[s]:
            best = s
            break
    # pathways.curves: "every" strength with a success for even targets, "one" for odd ones
    curve_strengths = [s for s in range(S) if ok[s]] if t % 2 == 0 else ([best] if best >= 0 else [])
    for cs in curve_strengths:
        for layer in LAYERS:
            if not counts[layer]:
                continue
            ks = [k for k in (1, 2, 4, 8, 16, 32) if k < CHANNELS] + [CHANNELS]
            for order in ("exploited", "delta", "random"):
                r = sorted(float(x) for x in rng.uniform(0, 1, len(ks)))
                r[-1] = 1.0
                lo = [max(0.0, x - 0.1) for x in r] if order == "random" else [math.nan] * len(ks)
                hi = [min(1.0, x + 0.1) for x in r] if order == "random" else [math.nan] * len(ks)
                curves.append(
                    dict(
                        target=t,
                        strength=cs,
                        layer=layer,
                        order=order,
                        k=ks,
                        recovery=r,
                        q05=lo,
                        q95=hi,
                        summary=[float(np.mean(r)), 2.0],
                    )
                )
    if best >= 0:
        for nd in nodes:  # each exploited neuron alone against single random channels
            if nd["role"] == "exploited":
                r, pctl = float(rng.uniform(-0.02, 0.3)), float(rng.integers(0, 17) * 100 / 16)
                rows.append(
                    dict(
                        target=t,
                        strength=best,
                        layer=nd["layer"],
                        set=f"neuron:{nd['channel']}",
                        n_neurons=1,
                        recovery=[4, r, r, 0.0, 0.0, 5.0, -2.0],
                        null_stats=[0.02, 0.03, 0.0, 0.08, pctl, 0.5, 16],
                        matched=[math.nan] * 4,
                        noising=[math.nan] * 5,
                    )
                )
    rows.sort(key=lambda x: x["strength"])
    return rows, curves


# --- the root ---------------------------------------------------------------------------------------


def make_results(
    root: str | Path,
    seed: int = 0,
    classes: int = 5,
    assets: bool = True,
    targets_per_file: int | None = None,
    originals: Iterable[int] | None = None,
    with_files: Iterable[tuple[int, int]] | str | None = None,
    names: list[str] | None = None,
    target_chunk: int | None = None,
    causal: bool = True,
) -> Path:
    """Write a results root (schema version ``layout.SCHEMA_VERSION``) under ``root`` and return its path.

    - ``originals``: the classes computed as originals (default: all but the last of the small
      root's 5 classes, else all); every other class is a target of each of them.
    - ``targets_per_file`` (alias ``target_chunk``): targets per work unit (``part-<j>`` files);
      default ``layout.max_targets_per_file``.
    - ``with_files``: the pairs that get nodes/edges/causal rows: None = every pair; "landing" =
      only the manifest's landing pair; or a set of (original, target) (the landing pair is always
      added).
    - ``causal``: False writes a root without activation patching (see the module docstring).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    store = Store(str(root))
    S = len(STRENGTHS)
    small = classes <= 64
    tpf = targets_per_file or target_chunk or layout.max_targets_per_file(S)
    if names is None:
        names = (
            [CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"class {i}" for i in range(classes)]
            if small
            else scale_names(classes)
        )
    wnids = [str(i) for i in range(classes)] if small else [f"n{10000000 + 7919 * i:08d}" for i in range(classes)]
    if originals is None:
        originals = range(classes - 1) if classes == len(CLASS_NAMES) else range(classes)
    originals = sorted(int(o) for o in originals)
    # images per class: the benign counts, and the correctly classified ones (attacked)
    n_img = np.full(classes, 12, np.int32) if small else rng.integers(30, 61, classes).astype(np.int32)
    n_correct = n_img if small else np.maximum(0, n_img - rng.integers(0, 8, classes)).astype(np.int32)
    if not small:
        n_correct[7] = 0  # one class the model never gets right: NaN success rates as an original

    # 1. every pair's row, without files yet
    ease = (rng.normal(-0.1, 0.12, classes), rng.normal(0, 0.12, classes))
    rows: dict[int, dict] = {}
    for o in originals:
        targets = np.array([t for t in range(classes) if t != o], np.int32)
        r = _pair_rows(rng, o, targets, int(n_correct[o]), small, ease)
        r["targets"] = targets
        r["n_images"] = int(n_correct[o])
        ns = r["n_success"]
        with np.errstate(invalid="ignore", divide="ignore"):  # a fraction of the successful attacks, NaN without any
            r["defused"] = np.where((ns > 0) & causal, np.floor(rng.random(ns.shape) * (ns + 1)) / ns, np.nan).astype(
                np.float32
            )
        rows[o] = r

    def success(r):
        with np.errstate(invalid="ignore", divide="ignore"):
            return (
                (r["n_success"] / r["n_images"]).astype(np.float32)
                if r["n_images"]
                else np.full(r["n_success"].shape, np.nan, np.float32)
            )

    o_all = np.concatenate([np.full(len(rows[o]["targets"]), o, np.int32) for o in originals])
    t_all = np.concatenate([rows[o]["targets"] for o in originals])
    land = landing_view(
        o_all,
        t_all,
        np.concatenate([success(rows[o]) for o in originals]),
        np.concatenate([rows[o]["n_exploited"] for o in originals]).astype(np.float32),
    )
    if with_files is None:
        files_for = None
    else:
        files_for = set() if with_files == "landing" else {(int(a), int(b)) for a, b in with_files}
        files_for.add((land["original"], land["target"]))

    # 2. per work unit: nodes/edges/causal files (pairs with files), the pairs/ marker, the aggregate
    agg = Aggregate(class_names=names, layers=[LayerSpec(n, CHANNELS) for n in LAYERS], n_strengths=S)
    shown: set[tuple[str, int]] = set()
    for o in originals:
        r = rows[o]
        targets = r["targets"]
        units = []
        for j in range(0, len(targets), tpf):
            part = j // tpf
            unit = targets[j : j + tpf]
            picked = [k for k, t in enumerate(unit) if files_for is None or (o, int(t)) in files_for]
            tables = {"nodes": [], "edges": [], "causal": [], "causal_curve": []}
            for k in picked:
                idx = j + k
                t = int(unit[k])
                nodes, edges, causal_rows, defused = _pair_tables(
                    rng,
                    t,
                    r["n_success"][idx],
                    None if files_for is None else int(r["n_exploited"][idx]),
                    causal=causal,
                    no_exploited=small and (o, t) == NO_EXPLOITED,
                )
                tables["nodes"] += nodes
                tables["edges"] += edges
                tables["causal"] += causal_rows[0]
                tables["causal_curve"] += causal_rows[1]
                r["n_nodes"][idx] = len(nodes)
                r["n_edges"][idx] = len(edges)
                r["n_exploited"][idx] = sum(n["role"] == "exploited" for n in nodes)
                r["defused"][idx] = np.array(defused, np.float32)
                shown |= {(n["layer"], n["channel"]) for n in nodes}
            units.append((j, part, unit, picked, tables))
        T = len(targets)
        pos = np.arange(T, dtype=np.int32)
        all_pairs = pa.table(
            {
                "target": pa.array(targets, pa.int32()),
                "n_images": pa.array(np.full(T, r["n_images"], np.int32)),
                "n_success": _list_array(r["n_success"], pa.list_(pa.int32())),
                "success_rate": _list_array(success(r), pa.list_(pa.float32())),
                "n_nodes": pa.array(r["n_nodes"], pa.int32()),
                "n_edges": pa.array(r["n_edges"], pa.int32()),
                "n_exploited": pa.array(r["n_exploited"], pa.int32()),
                "defused": _list_array(r["defused"], pa.list_(pa.float32())),
                "row_group": pa.array(pos % tpf, pa.int32()),
                "part": pa.array(pos // tpf, pa.int32()),
            },
            schema=layout.PAIRS_SCHEMA,
        )
        for j, part, unit, picked, tables in units:
            pairs = all_pairs.slice(j, len(unit))
            nodes_t = None
            if picked:
                groups = [int(t) for t in unit]
                for kind, schema in (
                    ("nodes", layout.NODES_SCHEMA),
                    ("edges", layout.edges_schema(S)),
                    ("causal", layout.CAUSAL_SCHEMA),
                    ("causal_curve", layout.CAUSAL_CURVE_SCHEMA),
                ):
                    t_ = pa.Table.from_pylist(tables[kind], schema=schema)
                    if kind == "nodes":
                        nodes_t = t_
                    store.write_bytes(
                        layout.part_path(kind, o, part),
                        layout.table_to_parquet(t_, "target", groups, footer_limit=layout.footer_limit(kind)),
                    )
                store.write_bytes(layout.part_path("pairs", o, part), layout.table_to_parquet(pairs))
            agg.add_unit(
                o,
                part,
                pairs,
                atlas=unit_atlas(
                    nodes_t, agg.offsets, S, pa.Table.from_pylist(tables["causal"], schema=layout.CAUSAL_SCHEMA)
                )
                if nodes_t is not None
                else None,
            )

    # 3. the global files, and the manifest
    benign = {c: {"n_images": int(n_img[c]), "n_correct": int(n_correct[c]), "n_skipped": 0} for c in range(classes)}
    write_global(store, agg, wnids, benign)
    landing = agg.landing()
    assert files_for is None or landing == land, (landing, land)  # the pairs with files kept their counts

    if assets:
        _write_assets(rng, store, shown, classes)
    manifest = {
        "schema_version": layout.SCHEMA_VERSION,
        "model": {"name": "synthetic", "input_shape": [1, 8, 8], "input_space": "pixels in [0,1]", "metadata": {}},
        "layers": [
            {"name": n, "channels": CHANNELS, "branch_sizes": [16, 16, 16, 16], "bottleneck_sizes": [8, 8]}
            for n in LAYERS
        ],
        "attack": {
            "method": "pgd_l2",
            "steps": 50,
            "step_ratio": 0.2,
            "random_start": True,
            "seed": 0,
            "bf16": False,
            "compile": False,
        },
        "strengths": STRENGTHS,
        "input_space": "pixels in [0,1]; eps is the L2 norm of the perturbation",
        "k": K,
        "images_per_class": None if not small else 12,
        "config_hash": f"synthetic-{seed}-{classes}",
        "config": {"model": "synthetic"},
        "classes": classes,
        "pairs_total": int(len(o_all)),
        "targets_per_file": tpf,
        "causal": causal,
        "versions": {},
        "created": "2026-01-01T00:00:00Z",
        "finished": "2026-01-01T00:00:00Z",
        "pairs_done": int(len(o_all)),
        "landing": landing,
    }
    store.write_json(layout.MANIFEST_PATH, manifest)
    return root


def _write_assets(rng, store: Store, shown: set[tuple[str, int]], classes: int) -> None:
    rows = []
    for layer, ch in sorted(shown):
        fv = f"neurons/feature_vis/{layer}/{ch}.png"
        store.write_bytes(fv, _png(rng, 32))
        rows.append(
            dict(
                layer=layer,
                channel=ch,
                kind="feature_vis",
                rank=0,
                path=fv,
                class_id=-1,
                image_index=-1,
                activation=1.0,
            )
        )
        for r in range(4):
            p = f"neurons/patches/{layer}/{ch}-{r}.png"
            store.write_bytes(p, _png(rng, 12))
            rows.append(
                dict(
                    layer=layer,
                    channel=ch,
                    kind="patch",
                    rank=r,
                    path=p,
                    class_id=r % classes,
                    image_index=r,
                    activation=float(4 - r),
                )
            )
    store.write_bytes(layout.ASSET_INDEX_PATH, layout.table_to_parquet(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)))


def make_v1_root(root: str | Path) -> Path:
    """A schema-version-1 root as bluff_ray 0.1 wrote it (manifest and one pair_index.parquet)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "model": {"name": "digits"},
                "layers": [{"name": "mixed3a", "channels": 4}],
                "attack": {"method": "pgd_l2"},
                "strengths": [0.1, 0.2],
                "k": 4,
            }
        )
    )
    t = pa.table(
        {
            "original": pa.array([0], pa.int32()),
            "target": pa.array([1], pa.int32()),
            "row_group": pa.array([0], pa.int32()),
        }
    )
    (root / "pair_index.parquet").write_bytes(layout.table_to_parquet(t))
    return root


# --- the tests' independent readers (pyarrow, never the viewer) ----------------------------------------


def manifest(root: str | Path) -> dict:
    return json.loads((Path(root) / "manifest.json").read_text())


def pair_index(root: str | Path, original: int) -> list[dict]:
    return pq.read_table(Path(root) / layout.pair_index_path(original)).to_pylist()


def read_pair(root: str | Path, original: int, target: int) -> tuple[dict, list[dict], list[dict]]:
    """(pair_index row, nodes, edges) of one pair, read with pyarrow (the tests' independent reader)."""
    root = Path(root)
    row = next(r for r in pair_index(root, original) if r["target"] == target)
    row = dict(original=original, **row)
    nodes = pq.read_table(root / layout.part_path("nodes", original, row["part"])).to_pylist()
    edges = pq.read_table(root / layout.part_path("edges", original, row["part"])).to_pylist()
    return row, [n for n in nodes if n["target"] == target], [e for e in edges if e["target"] == target]


def class_names(root: str | Path) -> dict[int, str]:
    t = pq.read_table(Path(root) / layout.CLASSES_PATH, columns=["class_id", "name"]).to_pylist()
    return {r["class_id"]: r["name"] for r in t}


def read_causal(root: str | Path, original: int, target: int) -> list[dict]:
    """The pair's causal rows (its row group of causal/original=<o>/part-<j>.parquet), read with pyarrow."""
    root = Path(root)
    row = next(r for r in pair_index(root, original) if r["target"] == target)
    f = pq.ParquetFile(root / layout.part_path("causal", original, row["part"]))
    rows = f.read_row_group(row["row_group"]).to_pylist()
    assert all(r["target"] == target for r in rows)
    return rows
