"""The run configuration: typed dataclasses, loading (TOML/YAML + CLI overrides), validation, hash.

A run is fully described by :class:`RunConfig`. It is loaded from a config file (TOML or YAML, the
same keys as the dataclass fields; ``[attack]``, ``[pathways]`` and ``[assets]`` tables for the
engine configs) and then overridden by command-line options. :func:`resolve` checks it against the
model (class names, default strengths) and gives :class:`ResolvedRun`, whose :meth:`canonical`
dict (only the fields that change results) is hashed into ``config_hash``: a rerun into the same
results root must have the same hash, so stale and fresh partitions can never be mixed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from bluff_ray.results import layout
from bluff_ray.results.store import redact_url
from bluff_ray.run.assets import AssetConfig
from bluff_ray.engine.pathways import PathwayConfig


def _default_attack():
    from bluff_ray.engine.attack import AttackConfig

    return AttackConfig()


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message says what to change."""


# Fields that never change the numbers written (where, how fast, how verbose): left out of the hash.
# Batch sizes are out too: random starts are drawn per fixed block of samples (attack.StartNoise),
# so a sample's attack does not depend on the batch it ran in (up to float rounding).
NON_RESULT_FIELDS = frozenset(
    {"out", "storage_options", "num_workers", "progress", "model_cache", "device", "attack_batch_size",
     "benign_batch_size", "worker_timeout_s", "node_cache"}
)
# Speed knobs inside the nested configs, also left out of the hash.
NON_RESULT_NESTED = {"attack": {"compile"}, "pathways": {"batch_size"}}


@dataclass
class RunConfig:
    """Everything a ``bluff run`` needs. See ``FIELD_HELP`` for the meaning of each field."""

    model: str = "digits"
    weights: str | None = None
    model_cache: str | None = None
    data: str = "digits"
    out: str = "./bluff-results"
    storage_options: dict[str, Any] = field(default_factory=dict)
    classes: list[int | str] | None = None
    originals: list[int | str] | None = None
    pairs: list[str] | None = None
    images_per_class: int | None = None
    strengths: list[float] | None = None
    seed: int = 0
    target_chunk: int | None = None
    num_workers: int | None = None
    worker_timeout_s: float = 600.0
    attack_batch_size: int | None = None
    benign_batch_size: int = 256
    device: str | None = None
    node_cache: str | None = None
    progress: bool = True
    attack: Any = field(default_factory=_default_attack)
    pathways: PathwayConfig = field(default_factory=PathwayConfig)
    assets: AssetConfig = field(default_factory=AssetConfig)

    def __post_init__(self) -> None:
        validate(self)


FIELD_HELP: dict[str, str] = {
    "model": "model to explain: 'digits' (the offline demo net), 'googlenet' (torchvision InceptionV1) or "
    "'rehearsal' (GoogLeNet's layers and 1,000 classes at 8x8 with seeded random weights: rehearse a full-scale run)",
    "weights": "model weights: for googlenet 'torchvision' (the torch hub cache), a local .pth state_dict, an "
    "fsspec URL (s3://...) or 'random' (benchmarks); for digits a state_dict path/URL (default: the cached or "
    "freshly trained demo net); for rehearsal 'seed:<n>'",
    "model_cache": "folder for the digits checkpoint cache (default $BLUFF_CACHE or ~/.cache/bluff_ray)",
    "data": "image source: 'digits' (scikit-learn digits, test split), 'synthetic' (deterministic generated "
    "images for any model; 8 per class unless images_per_class says otherwise) or an ImageFolder URL (local "
    "path, s3://bucket/prefix, ...) holding one folder per class named by its wnid/class id",
    "out": "results root: a local folder or an fsspec URL such as s3://bucket/prefix",
    "storage_options": "fsspec options for the results root and an s3:// image source, KEY=VALUE "
    "(repeatable; e.g. endpoint_url=http://127.0.0.1:9000, anon=false); never written to results or logs",
    "classes": "classes to include, by id, wnid or name, comma separated (default: all classes of the model)",
    "originals": "attack only these classes (toward every other selected class), by id, wnid or name, comma "
    "separated (default: all selected classes); e.g. to split a run, or to rehearse 3 originals x 999 targets",
    "pairs": "ordered pairs to compute as ORIGINAL:TARGET (ids, wnids or names), comma separated "
    "(default: every ordered pair of the selected classes)",
    "images_per_class": "use at most this many images per class (default: all)",
    "strengths": "attack strengths (eps in the model's [0,1] input space), comma separated, ascending "
    "(default: the model's default_strengths)",
    "seed": "base random seed; every work unit derives its own seed from it, the class and the target chunk",
    "target_chunk": "targets per work unit and per nodes/edges/causal file (default and maximum: as many as keep "
    "a file's Parquet footer within the viewer's first 16 KiB read, 20 at 10 strengths)",
    "num_workers": "Ray actors to run, one per GPU (or per CPU without GPUs); the run waits for them "
    "(default: every GPU the cluster can have, from the autoscaler's node types where available, else those "
    "present; without GPUs one per CPU)",
    "worker_timeout_s": "seconds to wait for the requested workers to start (the autoscaler may need to launch "
    "nodes); after that the run goes on with those ready, or stops if none is",
    "attack_batch_size": "attacked samples per PGD batch per actor (default: chosen from the device's free memory "
    "and the model's measured per-sample footprint; halved automatically on out-of-memory)",
    "benign_batch_size": "images per forward pass in the benign stage",
    "device": "torch device in the actors: 'cuda' or 'cpu' (default: cuda when the actor got a GPU)",
    "node_cache": "folder on each node's local disk for decoded images shared by the actors there "
    "(default $BLUFF_NODE_CACHE or <tmp>/bluff-node-cache)",
    "progress": "show a progress bar",
    "attack.method": "attack: pgd_l2 (the paper's), pgd_linf or fgsm",
    "attack.steps": "PGD iterations",
    "attack.step_ratio": "PGD step size as a fraction of eps",
    "attack.random_start": "start PGD from a random point in the eps ball",
    "attack.bf16": "on CUDA, run the attack under bfloat16 autocast (faster, slightly different numbers; ignored on CPU)",
    "attack.compile": "on CUDA, run the attack through torch.compile with one static batch shape (ignored on CPU)",
    "pathways.k": "top-k neurons per layer and condition for the roles (exploited takes k//2 per strength)",
    "pathways.batch_size": "images per forward pass / influence chunk when summarising a pair",
    "pathways.min_edge_influence": "store an edge when its influence exceeds this in some condition",
    "pathways.causal": "run the activation-patching experiments (causal/ files, node effect, pair defused)",
    "pathways.patch_images": "patch at most this many successfully attacked images per strength (single neurons: "
    "half as many); bounds the patching cost",
    "assets.enabled": "render neuron assets (feature visualisations and dataset-example patches)",
    "assets.all_neurons": "render assets for every neuron instead of only the displayed ones",
    "assets.n_patches": "dataset-example patches per neuron",
    "assets.fv_steps": "feature-visualisation optimisation steps",
    "assets.fv_size": "feature-visualisation side in pixels (default: the model input side, at most 128)",
    "assets.seed": "feature-visualisation seed",
    "assets.png_min_px": "smaller PNGs are upscaled (nearest neighbour) to at least this side",
    "assets.png_max_px": "larger PNGs are downscaled to at most this side",
    "assets.fv_batch_size": "neurons optimised together in one feature-visualisation batch",
}

NESTED = {"attack": _default_attack, "pathways": PathwayConfig, "assets": AssetConfig}
# Set at the top level (``strengths``), because their default depends on the model.
_NESTED_EXCLUDED = {"attack": {"strengths", "seed"}}


def nested_fields(section: str) -> list[dataclasses.Field]:
    cls = type(NESTED[section]()) if section == "attack" else NESTED[section]
    return [f for f in dataclasses.fields(cls) if f.name not in _NESTED_EXCLUDED.get(section, set())]


def validate(cfg: RunConfig) -> None:
    """Checks that need no model (the model-dependent ones are in :func:`resolve`)."""
    if not cfg.model:
        raise ConfigError("model must be set")
    if cfg.strengths is not None:
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in cfg.strengths):
            raise ConfigError(f"strengths must be numbers, got {cfg.strengths!r}")
        s = [float(x) for x in cfg.strengths]
        if not s:
            raise ConfigError("strengths must not be empty")
        bad = [x for x in s if not math.isfinite(x) or x <= 0]
        if bad:
            raise ConfigError(f"strengths must be finite and > 0, got {bad}")
        if any(b <= a for a, b in zip(s, s[1:])):
            raise ConfigError(f"strengths must be strictly ascending, got {s}")
        cfg.strengths = s
    for name in ("images_per_class", "target_chunk", "num_workers"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{name} must be a positive integer or unset, got {v!r}")
    for name in ("attack_batch_size",):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"{name} must be a positive integer or unset, got {v!r}")
    for name in ("benign_batch_size",):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(cfg.worker_timeout_s, bool) or not isinstance(cfg.worker_timeout_s, (int, float)) \
            or not math.isfinite(cfg.worker_timeout_s) or cfg.worker_timeout_s < 0:
        raise ConfigError(f"worker_timeout_s must be a number of seconds >= 0, got {cfg.worker_timeout_s!r}")
    from bluff_ray.engine.models import MODEL_NAMES

    if cfg.model not in MODEL_NAMES:
        close = difflib.get_close_matches(str(cfg.model), MODEL_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {cfg.model!r}{hint}; valid: {', '.join(MODEL_NAMES)}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.seed!r}")
    if cfg.device not in (None, "cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ConfigError(f"device must be 'cpu', 'cuda' or unset, got {cfg.device!r}")
    if not isinstance(cfg.storage_options, dict):
        raise ConfigError("storage_options must be a mapping of KEY=VALUE")


# ---------------------------------------------------------------------------------------------
# Loading


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Coerce a value from a file or the CLI to the type of the field's default (when known)."""
    if value is None:
        return None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    try:
        if isinstance(default, int) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a {type(default).__name__}, got {value!r}") from None
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def _unknown(key: str, valid: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown {where} key {key!r}{hint} (valid: {', '.join(sorted(valid))})")


def _build_nested(section: str, values: Mapping[str, Any], base: Any) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"[{section}] must be a table of keys, got {values!r}")
    names = {f.name: f for f in nested_fields(section)}
    changes = {}
    for k, v in values.items():
        if section == "attack" and k == "strengths":
            raise ConfigError("set strengths at the top level (strengths = [...]), not in [attack]")
        if k not in names:
            raise _unknown(k, list(names), f"[{section}]")
        changes[k] = _coerce(v, getattr(base, k), f"{section}.{k}")
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid [{section}]: {e}") from e


def _listify(value: Any) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        value = [value]
    return list(value)


def from_dict(values: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Apply ``values`` (a parsed config file or CLI overrides) on top of ``base`` (defaults)."""
    base = base or RunConfig()
    top = {f.name: f for f in dataclasses.fields(RunConfig)}
    changes: dict[str, Any] = {}
    for k, v in values.items():
        k = k.replace("-", "_")
        if k not in top:
            raise _unknown(k, list(top), "config")
        if k in NESTED:
            changes[k] = _build_nested(k, v, changes.get(k, getattr(base, k)))
        elif k in ("classes", "pairs", "originals"):
            items = _listify(v)
            if k == "pairs" and items is not None:
                items = [f"{p[0]}:{p[1]}" if isinstance(p, (list, tuple)) and len(p) == 2 else str(p) for p in items]
            changes[k] = items
        elif k == "strengths":
            items = _listify(v)
            if items is not None and any(isinstance(x, bool) for x in items):
                raise ConfigError(f"strengths must be numbers, got {v!r}")
            try:
                changes[k] = None if items is None else [float(x) for x in items]
            except (TypeError, ValueError):
                raise ConfigError(f"strengths must be numbers, got {v!r}") from None
        elif k == "storage_options":
            if not isinstance(v, Mapping):
                raise ConfigError("storage_options must be a table of KEY = VALUE")
            changes[k] = {**getattr(base, k), **dict(v)}
        elif k in ("weights", "model_cache", "device", "images_per_class", "target_chunk", "num_workers",
                   "attack_batch_size", "node_cache"):
            if k in ("images_per_class", "target_chunk", "num_workers", "attack_batch_size") and v is not None:
                v = _coerce(v, 0, k)
            changes[k] = v
        else:
            changes[k] = _coerce(v, getattr(base, k), k)
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


def load_file(path: str) -> dict[str, Any]:
    """Parse a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file into a dict."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        if path.endswith(".toml"):
            import tomllib

            parsed = tomllib.loads(data.decode())
        elif path.endswith((".yaml", ".yml")):
            import yaml

            parsed = yaml.safe_load(data) or {}
        else:
            raise ConfigError(f"config file must end in .toml, .yaml or .yml: {path}")
    except ConfigError:
        raise
    except Exception as e:  # parse errors of either format
        raise ConfigError(f"cannot parse {path}: {e}") from e
    if not isinstance(parsed, dict):
        raise ConfigError(f"{path} must hold a mapping of keys at the top level")
    return parsed


def load(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults, then the config file (if any), then the CLI ``overrides`` (dotted keys allowed)."""
    cfg = from_dict(load_file(path)) if path else RunConfig()
    if overrides:
        cfg = from_dict(unflatten(overrides), cfg)
    return cfg


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"attack.steps": 5, "seed": 1} -> {"attack": {"steps": 5}, "seed": 1}."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        if "." in k:
            sec, sub = k.split(".", 1)
            out.setdefault(sec, {})[sub] = v
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# Resolution against the model


@dataclass(frozen=True)
class ResolvedRun:
    """A RunConfig checked against the model: concrete class ids, pairs, strengths and chunking."""

    config: RunConfig
    attack: Any  # AttackConfig with the resolved strengths
    classes: tuple[int, ...]  # benign stage: every class used by some pair, ascending
    pairs: tuple[tuple[int, int], ...]  # (original, target), sorted
    target_chunk: int
    model_identity: Mapping[str, Any]

    @property
    def strengths(self) -> tuple[float, ...]:
        return tuple(self.attack.strengths)

    def canonical(self) -> dict[str, Any]:
        """The fields that affect results, as plain JSON-able values (input of ``config_hash``)."""
        c = self.config
        out: dict[str, Any] = {}
        for f in dataclasses.fields(RunConfig):
            if f.name in NON_RESULT_FIELDS:
                continue
            v = getattr(c, f.name)
            if f.name == "attack":
                v = _plain(dataclasses.asdict(self.attack))
            elif dataclasses.is_dataclass(v):
                v = _plain(dataclasses.asdict(v))
            if f.name in NON_RESULT_NESTED:
                v = {key: x for key, x in v.items() if key not in NON_RESULT_NESTED[f.name]}
            out[f.name] = v
        out["data"] = redact_url(c.data)
        out["weights"] = redact_url(c.weights) if c.weights else None
        out["classes"] = list(self.classes)
        # Explicit pairs only: the default (every ordered pair of ``classes``) is implied, and
        # listing 999,000 pairs would make manifest.json megabytes for the viewer.
        out["pairs"] = [list(p) for p in self.pairs] if c.pairs is not None else "all"
        out["originals"] = sorted({o for o, _ in self.pairs}) if c.originals is not None else None
        out["strengths"] = list(self.strengths)
        out["target_chunk"] = self.target_chunk
        out["model_identity"] = dict(self.model_identity)
        return out

    def config_hash(self) -> str:
        return config_hash(self.canonical())


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def canonical_json(obj: Any) -> str:
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(canonical: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(canonical).encode()).hexdigest()


def diff_fields(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ between two canonical configs."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<missing>"), new.get(k, "<missing>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += diff_fields(a, b, f"{prefix}{k}.")
        elif _plain(a) != _plain(b):
            out.append(prefix + k)
    return out


def resolve_class(token: int | str, class_ids: Sequence[str], class_names: Sequence[str]) -> int:
    """A class id (int or digit string), wnid or name -> logit index; unknown -> close matches."""
    n = len(class_ids)
    if isinstance(token, bool):
        raise ConfigError(f"invalid class {token!r}")
    if isinstance(token, int) or (isinstance(token, str) and token.strip().lstrip("-").isdigit()):
        s = str(token).strip()
        if s in class_ids:  # digits: wnid "3" is class 3
            return class_ids.index(s)
        i = int(s)
        if not 0 <= i < n:
            raise ConfigError(f"class id {i} out of range: the model has {n} classes (0..{n - 1})")
        return i
    t = str(token).strip()
    if t in class_ids:
        return class_ids.index(t)
    lowered = [c.lower() for c in class_names]
    if t.lower() in lowered:
        return lowered.index(t.lower())
    close = difflib.get_close_matches(t.lower(), lowered + [c.lower() for c in class_ids], n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(repr(c) for c in close)}." if close else ""
    raise ConfigError(f"unknown class {t!r}: not a class id, wnid or name of this model.{hint}")


def resolve(cfg: RunConfig, adapter, model_identity: Mapping[str, Any] | None = None) -> ResolvedRun:
    """Check ``cfg`` against ``adapter`` and fix everything the hash depends on."""
    ids, names = list(adapter.class_ids), list(adapter.class_names)
    if cfg.classes is not None:
        classes = sorted({resolve_class(c, ids, names) for c in cfg.classes})
        if not classes:
            raise ConfigError("classes is empty")
    else:
        classes = None
    if cfg.pairs is not None and cfg.originals is not None:
        raise ConfigError("set either pairs or originals, not both")
    if cfg.pairs is not None:
        pairs = set()
        for p in cfg.pairs:
            parts = str(p).split(":")
            if len(parts) != 2:
                raise ConfigError(f"a pair is ORIGINAL:TARGET, got {p!r}")
            o, t = (resolve_class(x, ids, names) for x in parts)
            if o == t:
                raise ConfigError(f"pair {p!r}: original and target are the same class")
            if classes is not None and (o not in classes or t not in classes):
                raise ConfigError(f"pair {p!r} uses a class outside the selected classes")
            pairs.add((o, t))
        pairs = sorted(pairs)
        if not pairs:
            raise ConfigError("pairs is empty")
        classes = sorted({c for p in pairs for c in p} | set(classes or []))
    else:
        classes = classes if classes is not None else list(range(len(ids)))
        if len(classes) < 2:
            raise ConfigError("need at least two classes to form a pair")
        originals = classes
        if cfg.originals is not None:
            originals = sorted({resolve_class(c, ids, names) for c in cfg.originals})
            outside = [c for c in originals if c not in set(classes)]
            if not originals or outside:
                raise ConfigError(f"originals must be a non-empty subset of the selected classes (outside: {outside})")
        pairs = [(o, t) for o in originals for t in classes if o != t]
    strengths = cfg.strengths
    if strengths is None:
        strengths = adapter.metadata.get("default_strengths")
        if not strengths:
            raise ConfigError(f"model {adapter.name} has no default_strengths: set strengths")
    try:
        attack = dataclasses.replace(cfg.attack, strengths=tuple(float(s) for s in strengths), seed=cfg.seed)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid attack config: {e}") from e
    n_targets = max(sum(1 for p in pairs if p[0] == o) for o in {p[0] for p in pairs})
    limit = layout.max_targets_per_file(len(attack.strengths))
    if cfg.target_chunk is not None and cfg.target_chunk > limit:
        raise ConfigError(f"target_chunk {cfg.target_chunk} is too large: a nodes/edges file with more than {limit} "
                          f"targets at {len(attack.strengths)} strengths has a Parquet footer larger than the "
                          "viewer's first 16 KiB read")
    chunk = cfg.target_chunk or limit
    identity = dict(model_identity or {})
    return ResolvedRun(cfg, attack, tuple(classes), tuple(pairs), int(min(chunk, n_targets)), identity)


def model_identity(adapter, cfg: RunConfig) -> dict[str, Any]:
    """What names the weights: the checkpoint hash when the adapter reports one, else the URL."""
    meta = adapter.metadata or {}
    ident = {"name": adapter.name, "weights": redact_url(cfg.weights) if cfg.weights else None}
    for key in ("checkpoint_sha256", "weights_sha256", "sha256"):
        if key in meta:
            ident["sha256"] = meta[key]
            break
    return ident
