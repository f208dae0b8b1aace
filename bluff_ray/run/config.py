"""The run configuration: one declaration per field, validated by pydantic; loading, resolution, hash.

A run is fully described by :class:`RunConfig`, a pydantic dataclass. Each field is declared once
(``engine.settings.setting``: default, bounds, description); the nested ``[attack]``,
``[pathways]`` and ``[assets]`` tables are the engine's own dataclasses, declared the same way.
pydantic validates config files (TOML/YAML), command-line options and direct construction against
those declarations (``bluff_ray.run.options`` generates the ``bluff run`` options and their
``--help`` from them, so a new field is a new option without more code). Errors are
:class:`ConfigError`: one line naming the dotted key (``attack.steps``).

:func:`resolve` checks a config against the model (class names, default strengths) and gives
:class:`ResolvedRun`. Its :meth:`~ResolvedRun.canonical` dict, hashed into ``config_hash``, is the
results identity: only what changes a pair's numbers (model and weights, data, images, attack,
pathway and causal settings, strengths, seed), not where results go, how fast they are computed,
nor which classes, originals or pairs were selected (:meth:`~ResolvedRun.selection`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import os
import typing
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationError

from bluff_ray.engine.attack import AttackConfig
from bluff_ray.engine.pathways import PathwayConfig
from bluff_ray.engine.settings import setting
from bluff_ray.results import layout
from bluff_ray.results.store import redact_url
from bluff_ray.run.assets import AssetConfig


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message says what to change."""


# ---------------------------------------------------------------------------------------------
# KEY=VALUE: the one parser (--storage-option in run, publish and submit; --set; submit --env)


def parse_assignment(text: str) -> tuple[str, str]:
    """``"KEY=VALUE"`` -> ``("KEY", "VALUE")``: split at the first ``=``, both stripped, the key non-empty."""
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def scalar(text: str) -> bool | int | float | str:
    """A free-form option value: ``true``/``false`` (any case) are booleans, a number written the way
    Python writes it back (``8``, ``0.5``; not ``08`` or ``1e3``) is a number, anything else stays text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            if repr(kind(text)) == text:
                return kind(text)
        except ValueError:
            pass
    return text


def parse_options(items: Iterable[str] | None) -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` storage options -> a dict (values by :func:`scalar`; the last one wins)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, value = parse_assignment(item)
        out[key] = scalar(value)
    return out


# ---------------------------------------------------------------------------------------------
# The fields


def _settings_class(engine_cls: type, drop: set[str], name: str) -> type:
    """``engine_cls`` without the fields in ``drop`` (which live elsewhere in RunConfig): the same
    field declarations, validated by the engine class itself (its ``__post_init__``)."""
    hints = typing.get_type_hints(engine_cls)
    fields = [
        (
            f.name,
            hints[f.name],
            dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata),
        )
        for f in dataclasses.fields(engine_cls)
        if f.name not in drop
    ]

    def __post_init__(self) -> None:
        engine_cls(**dataclasses.asdict(self))

    cls = dataclasses.make_dataclass(name, fields, frozen=True, namespace={"__post_init__": __post_init__})
    cls.__module__, cls.__doc__ = __name__, f"{engine_cls.__name__} without {', '.join(sorted(drop))}."
    return cls


#: The ``[attack]`` table: AttackConfig's fields but ``strengths`` and ``seed``, whose one home is the
#: top level (the default strengths depend on the model; the seed also seeds units and controls).
AttackSettings = _settings_class(AttackConfig, {"strengths", "seed"}, "AttackSettings")


def _split(value: Any) -> Any:
    """``"a,b"`` (the command line) -> ``["a", "b"]``; a single value -> a one-item list."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value if value is None or isinstance(value, (list, tuple)) else [value]


def _numbers(value: Any) -> Any:
    items = _split(value)
    try:
        return None if items is None else [float(x) if isinstance(x, str) else x for x in items]
    except ValueError:
        raise ValueError(f"must be numbers, got {value!r}") from None


def _ascending(values: list[float] | None) -> list[float] | None:
    if values is not None and any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"must be strictly ascending, got {values}")
    return values


def _pairs(value: Any) -> Any:
    items = _split(value)
    return (
        None
        if items is None
        else [f"{p[0]}:{p[1]}" if isinstance(p, (list, tuple)) and len(p) == 2 else p for p in items]
    )


def _known_model(name: str) -> str:
    from bluff_ray.engine.models import MODEL_NAMES

    if name not in MODEL_NAMES:
        close = difflib.get_close_matches(name, MODEL_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; valid: {', '.join(MODEL_NAMES)}")
    return name


# Bounds on sizes no real run needs, so a typo cannot start an endless run (ImageNet's training set
# has ~1,300 images per class; the footer limit caps target_chunk far lower, see resolve()).
Classes = Annotated[Annotated[list[int | str], Field(min_length=1)] | None, BeforeValidator(_split)]
Strength = Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
Strengths = Annotated[
    Annotated[list[Strength], Field(min_length=1, max_length=100)] | None,
    BeforeValidator(_numbers),
    AfterValidator(_ascending),
]
Pairs = Annotated[Annotated[list[str], Field(min_length=1)] | None, BeforeValidator(_pairs)]
ModelName = Annotated[str, AfterValidator(_known_model)]

#: ``setting(..., identity=False)``: a field that never changes a pair's numbers (where results go,
#: how fast they are computed, which pairs are selected): left out of the results identity.
NOT_IDENTITY = {"identity": False}


@pydantic.dataclasses.dataclass(config=ConfigDict(extra="forbid", strict=True, revalidate_instances="always"))
class RunConfig:
    """Everything a ``bluff run`` needs; each field's description is its ``--help`` text."""

    model: ModelName = setting(
        "digits",
        "model to explain: 'digits' (the offline demo net), 'googlenet' (torchvision InceptionV1) or "
        "'rehearsal' (GoogLeNet's layers and 1,000 classes at 8x8 with seeded random weights: rehearse a full-scale "
        "run)",
    )
    weights: str | None = setting(
        None,
        "model weights: for googlenet 'torchvision' (the torch hub cache), a local .pth state_dict, an fsspec "
        "URL (s3://...) or 'random' (benchmarks); for digits a state_dict path/URL (default: the cached or freshly "
        "trained demo net); for rehearsal 'seed:<n>'",
    )
    model_cache: str | None = setting(
        None, "folder for the digits checkpoint cache (default $BLUFF_CACHE or ~/.cache/bluff_ray)", **NOT_IDENTITY
    )
    data: str = setting(
        "digits",
        "image source: 'digits' (scikit-learn digits, test split), 'synthetic' (deterministic generated "
        "images for any model; 8 per class unless images_per_class says otherwise) or an ImageFolder URL (local path, "
        "s3://bucket/prefix, ...) holding one folder per class named by its wnid/class id",
    )
    out: str = setting(
        "./bluff-results", "results root: a local folder or an fsspec URL such as s3://bucket/prefix", **NOT_IDENTITY
    )
    storage_options: dict[str, Any] = setting(
        dict,
        "fsspec options for the results root and an s3:// image source, KEY=VALUE (repeatable; e.g. "
        "endpoint_url=http://127.0.0.1:9000, anon=false; true/false and plain numbers are typed); never written to "
        "results or logs",
        **NOT_IDENTITY,
    )
    classes: Classes = setting(
        None,
        "classes to include, by id, wnid or name, comma separated (default: all classes of the model)",
        **NOT_IDENTITY,
    )
    originals: Classes = setting(
        None,
        "attack only these classes (toward every other selected class), by id, wnid or name, comma separated "
        "(default: all selected classes); e.g. to split a run, or to rehearse 3 originals x 999 targets",
        **NOT_IDENTITY,
    )
    pairs: Pairs = setting(
        None,
        "ordered pairs to compute as ORIGINAL:TARGET (ids, wnids or names), comma separated (default: every "
        "ordered pair of the selected classes)",
        **NOT_IDENTITY,
    )
    images_per_class: int | None = setting(
        None, "use at most this many images per class (default: all)", ge=1, le=100_000
    )
    strengths: Strengths = setting(
        None,
        "attack strengths (eps in the model's [0,1] input space), comma separated, ascending (default: the "
        "model's default_strengths)",
    )
    seed: int = setting(
        0,
        "base random seed; every work unit derives its own seed from it, the class and the target chunk",
        ge=0,
        lt=2**63,
    )
    target_chunk: int | None = setting(
        None,
        "targets per work unit and per nodes/edges/causal file (default and maximum: as many as keep a file's "
        f"Parquet footer within the viewer's first 16 KiB read, {layout.max_targets_per_file(10)} at 10 strengths)",
        ge=1,
        le=10_000,
    )
    num_workers: int | None = setting(
        None,
        "Ray actors to run, one per GPU (or per CPU without GPUs); the run waits for them (default: every GPU "
        "the cluster can have, from the autoscaler's node types where available, else those present; without GPUs "
        "one per CPU)",
        ge=1,
        le=100_000,
        **NOT_IDENTITY,
    )
    worker_timeout_s: float = setting(
        600.0,
        "seconds to wait for the requested workers to start (the autoscaler may need to launch nodes); after "
        "that the run goes on with those ready, or stops if none is",
        ge=0,
        le=7 * 86_400,
        allow_inf_nan=False,
        **NOT_IDENTITY,
    )
    attack_batch_size: int | None = setting(
        None,
        "attacked samples per PGD batch per actor (default: chosen from the device's free memory and the "
        "model's measured per-sample footprint; halved automatically on out-of-memory)",
        ge=1,
        le=2**20,
        **NOT_IDENTITY,
    )
    benign_batch_size: int = setting(
        256, "images per forward pass in the benign stage", ge=1, le=65_536, **NOT_IDENTITY
    )
    device: str | None = setting(
        None,
        "torch device in the actors: 'cuda', 'cuda:N' or 'cpu' (default: cuda when the actor got a GPU)",
        pattern=r"^(cpu|cuda(:[0-9]+)?)$",
        **NOT_IDENTITY,
    )
    node_cache: str | None = setting(
        None,
        "folder on each node's local disk for decoded images shared by the actors there (default "
        "$BLUFF_NODE_CACHE or <tmp>/bluff-node-cache)",
        **NOT_IDENTITY,
    )
    progress: bool = setting(True, "show a progress bar", **NOT_IDENTITY)
    attack: AttackSettings = setting(AttackSettings, "the attack")  # type: ignore[valid-type]
    pathways: PathwayConfig = setting(PathwayConfig, "the pair summary")
    assets: AssetConfig = setting(AssetConfig, "the neuron assets")


def _raise_config_errors(cls: Any) -> None:
    """Direct construction (``RunConfig(...)``, ``dataclasses.replace``) raises ConfigError too."""
    init = cls.__init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as e:
            raise config_error(e) from None

    cls.__init__ = __init__


_raise_config_errors(RunConfig)
_VALIDATOR = pydantic.TypeAdapter(RunConfig)


def sections() -> dict[str, type]:
    """The nested tables of RunConfig (``attack``, ``pathways``, ``assets``, any added later) -> class."""
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(hints[f.name])}


def field_table(cls: type = RunConfig) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Field name -> (its dataclasses.Field, its type without Optional/Annotated) for ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, _base(hints[f.name])) for f in dataclasses.fields(cls)}


def _base(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if type(None) in typing.get_args(hint) and len(args) == 1:
        return args[0]
    return hint


# ---------------------------------------------------------------------------------------------
# Errors: one line naming the dotted key

# Keys people put in the wrong table, with what to do instead.
_MOVED = {
    "attack.strengths": "set strengths at the top level (strengths = [...]), not in [attack]",
    "attack.seed": "set seed at the top level (seed = N), not in [attack]",
}


def _dotted(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unknown(key: str) -> ConfigError:
    if key in _MOVED:
        return ConfigError(_MOVED[key])
    section, _, name = key.rpartition(".")
    cls = sections().get(section, RunConfig) if section else RunConfig
    valid = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    where = f"[{section}] key" if section else "config key"
    return ConfigError(f"unknown {where} {name!r}{hint} (valid: {', '.join(sorted(valid))})")


def config_error(e: ValidationError) -> ConfigError:
    """The first error of a pydantic ValidationError as one line: ``attack.steps: input should be ..., got 0``."""
    err = e.errors()[0]
    key = _dotted(err["loc"]) or "config"
    if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return _unknown(key)
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:]
    if err["type"] in ("dict_type", "dataclass_type"):  # pydantic's JSON word "object"
        msg = "must be a table of keys (KEY = VALUE)"
    if err["type"] == "value_error" or "input" not in err or key.startswith("storage_options"):
        return ConfigError(f"{key}: {msg}")  # (never echo a storage option: it may be a secret)
    return ConfigError(f"{key}: {msg}, got {err['input']!r}")


# ---------------------------------------------------------------------------------------------
# Loading: defaults <- config file <- command line


def _normalise(values: Mapping[str, Any]) -> dict[str, Any]:
    """Field names written with '-' (``images-per-class``) as '_', at the top level and in the tables
    (not inside ``storage_options``, whose keys belong to fsspec)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"the config must be a table of keys, got {values!r}")
    nested = sections()
    out = {}
    for k, v in values.items():
        k = str(k).replace("-", "_")
        out[k] = {str(a).replace("-", "_"): b for a, b in v.items()} if k in nested and isinstance(v, Mapping) else v
    return out


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; nested tables (``[attack]``, ``storage_options``) merge key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def build(values: Mapping[str, Any]) -> RunConfig:
    """Validate a plain mapping (a parsed config file, merged overrides) into a RunConfig.

    Strict JSON-mode validation: types as written (no ``"3"`` for 3, no ``true`` for 1), tables as
    tables; the command line's text is typed per field before (:func:`typed_overrides`)."""
    try:
        text = json.dumps(_normalise(values), allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"unsupported value in the config: {e}") from None
    try:
        return _VALIDATOR.validate_json(text, strict=True)
    except ValidationError as e:
        raise config_error(e) from None


def as_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(values: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Apply ``values`` (a parsed config file or overrides, nested) on top of ``base`` (defaults)."""
    return build(_merge(as_dict(base) if base is not None else {}, _normalise(values)))


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
        raise ConfigError(f"cannot parse {path}: {' '.join(str(e).split())}") from e
    if not isinstance(parsed, dict):
        raise ConfigError(f"{path} must hold a mapping of keys at the top level")
    return parsed


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"attack.steps": 5, "seed": 1} -> {"attack": {"steps": 5}, "seed": 1}."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        head, _, rest = k.partition(".")
        out = _merge(out, {head: {rest: v} if rest else v})
    return out


def _field_for(key: str) -> tuple[dataclasses.Field, Any]:
    """The declaration of a dotted key (``attack.steps``); ConfigError with close matches if unknown."""
    section, _, name = key.replace("-", "_").partition(".")
    section, name = (section, name) if name else ("", section)
    cls: type | None = sections().get(section) if section else RunConfig
    if cls is None:
        raise _unknown(section)
    table = field_table(cls)
    if name not in table or (not section and name in sections()):
        raise _unknown(key.replace("-", "_"))
    return table[name]


def typed_value(key: str, text: Any) -> Any:
    """Command-line text for ``key`` typed by its field: ``"5"`` -> 5 for an int, ``"false"`` -> False
    for a bool; lists stay text (split by the field's validator); storage options by :func:`scalar`."""
    if key.startswith("storage_options."):
        return scalar(text) if isinstance(text, str) else text
    f, typ = _field_for(key)
    if not isinstance(text, str) or typing.get_origin(typ) in (list, dict):
        return text
    try:
        return pydantic.TypeAdapter(typ | None if f.default is None else typ).validate_strings(text)
    except ValidationError as e:
        msg = e.errors()[0]["msg"]
        raise ConfigError(f"{key}: {msg[0].lower() + msg[1:]}, got {text!r}") from None


def typed_overrides(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted command-line overrides (text or values) -> a nested dict of typed values."""
    return _normalise(unflatten({k: typed_value(k, v) for k, v in flat.items()}))


def load(
    path: str | None = None, overrides: Mapping[str, Any] | None = None, base: Mapping[str, Any] | None = None
) -> RunConfig:
    """Defaults, then ``base`` (other defaults, e.g. the demo's), then the config file (if any), then the
    ``overrides`` (dotted keys; text is typed by the field)."""
    values = _merge(_normalise(base or {}), _normalise(load_file(path)) if path else {})
    return build(_merge(values, typed_overrides(overrides or {})))


# ---------------------------------------------------------------------------------------------
# Resolution against the model


@dataclass(frozen=True)
class ResolvedRun:
    """A RunConfig checked against the model: concrete class ids, pairs, strengths and chunking."""

    config: RunConfig
    attack: AttackConfig  # the [attack] settings with the resolved strengths and the seed
    classes: tuple[int, ...]  # benign stage: every class used by some pair, ascending
    pairs: tuple[tuple[int, int], ...]  # (original, target), sorted
    target_chunk: int
    model_identity: Mapping[str, Any]

    @property
    def strengths(self) -> tuple[float, ...]:
        return tuple(self.attack.strengths)

    def canonical(self) -> dict[str, Any]:
        """The results identity (input of ``config_hash``), plain JSON: every field declared as changing
        the numbers, with resolved strengths, redacted URLs and the model's identity; not the selection."""
        out = _identity(self.config)
        out["data"] = redact_url(self.config.data)
        out["weights"] = redact_url(self.config.weights) if self.config.weights else None
        out["strengths"] = list(self.strengths)
        out["model_identity"] = _plain(dict(self.model_identity))
        return out

    def selection(self) -> dict[str, Any]:
        """Which pairs this run computes (not part of the identity: a root can grow by selections)."""
        c = self.config
        return {
            "classes": list(self.classes),
            # explicit pairs only: listing 999,000 default pairs would make manifest.json megabytes
            "pairs": [list(p) for p in self.pairs] if c.pairs is not None else "all",
            "originals": sorted({o for o, _ in self.pairs}) if c.originals is not None else None,
            "target_chunk": self.target_chunk,
        }

    def config_hash(self) -> str:
        return config_hash(self.canonical())


def _identity(obj: Any) -> dict[str, Any]:
    """The fields of dataclass ``obj`` (recursively) not declared ``identity=False``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("identity", True):
            v = getattr(obj, f.name)
            out[f.name] = _identity(v) if dataclasses.is_dataclass(v) else _plain(v)
    return out


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


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part, "<missing>") if isinstance(tree, Mapping) else "<missing>"
    return tree


def mismatch_message(root: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Why a root holding results of canonical config ``old`` refuses a run of ``new``: the differing
    fields, each with both values when they are short."""
    names = diff_fields(old, new) or ["config_hash"]
    parts = []
    for name in names:
        a, b = (json.dumps(_plain(_lookup(t, name)), default=str) for t in (old, new))
        parts.append(f"{name} ({a} -> {b})" if len(a) + len(b) <= 60 and name != "config_hash" else name)
    return (
        f"{root} already holds results of a different run configuration (differing: {', '.join(parts)}). "
        "Use another output root, or pass --overwrite to delete those results."
    )


class ClassIndex:
    """A model's classes by id (int or digit string), wnid or name; built once, so resolving N tokens is O(N)."""

    def __init__(self, class_ids: Sequence[str], class_names: Sequence[str]):
        self.ids, self.names = list(class_ids), list(class_names)
        self.by_id: dict[str, int] = {}
        self.by_name: dict[str, int] = {}
        for i, c in enumerate(self.ids):
            self.by_id.setdefault(str(c), i)
        for i, c in enumerate(self.names):
            self.by_name.setdefault(str(c).lower(), i)

    def __len__(self) -> int:
        return len(self.ids)

    def __call__(self, token: int | str) -> int:
        n = len(self.ids)
        if isinstance(token, bool):
            raise ConfigError(f"invalid class {token!r}")
        s = str(token).strip()
        if isinstance(token, int) or s.lstrip("-").isdigit():
            if s in self.by_id:  # digits: wnid "3" is class 3
                return self.by_id[s]
            i = int(s)
            if not 0 <= i < n:
                raise ConfigError(f"class id {i} out of range: the model has {n} classes (0..{n - 1})")
            return i
        if s in self.by_id:
            return self.by_id[s]
        if s.lower() in self.by_name:
            return self.by_name[s.lower()]
        candidates = list(self.by_name) + [c.lower() for c in self.by_id]
        close = difflib.get_close_matches(s.lower(), candidates, n=5, cutoff=0.6)
        hint = f" Close matches: {', '.join(repr(c) for c in close)}." if close else ""
        raise ConfigError(f"unknown class {s!r}: not a class id, wnid or name of this model.{hint}")


def resolve_class(token: int | str, class_ids: Sequence[str], class_names: Sequence[str]) -> int:
    """A class id (int or digit string), wnid or name -> logit index; unknown -> close matches."""
    return ClassIndex(class_ids, class_names)(token)


def resolve(cfg: RunConfig, adapter, model_identity: Mapping[str, Any] | None = None) -> ResolvedRun:
    """Check ``cfg`` against ``adapter`` and fix everything the hash depends on; linear in the number
    of classes and pairs (one index of the classes, sets for membership, a count per original)."""
    index = ClassIndex(adapter.class_ids, adapter.class_names)
    classes = sorted({index(c) for c in cfg.classes}) if cfg.classes is not None else None
    if cfg.pairs is not None and cfg.originals is not None:
        raise ConfigError("set either pairs or originals, not both")
    if cfg.pairs is not None:
        selected = set(classes) if classes is not None else None
        pairs_set = set()
        for p in cfg.pairs:
            parts = str(p).split(":")
            if len(parts) != 2:
                raise ConfigError(f"a pair is ORIGINAL:TARGET, got {p!r}")
            o, t = index(parts[0]), index(parts[1])
            if o == t:
                raise ConfigError(f"pair {p!r}: original and target are the same class")
            if selected is not None and (o not in selected or t not in selected):
                raise ConfigError(f"pair {p!r} uses a class outside the selected classes")
            pairs_set.add((o, t))
        pairs = sorted(pairs_set)
        classes = sorted({c for p in pairs for c in p} | set(classes or []))
        n_targets = max(Counter(o for o, _ in pairs).values())
    else:
        classes = classes if classes is not None else list(range(len(index)))
        if len(classes) < 2:
            raise ConfigError("need at least two classes to form a pair")
        originals = classes
        if cfg.originals is not None:
            originals = sorted({index(c) for c in cfg.originals})
            selected = set(classes)
            outside = [c for c in originals if c not in selected]
            if outside:
                raise ConfigError(f"originals must be a subset of the selected classes (outside: {outside})")
        pairs = [(o, t) for o in originals for t in classes if o != t]
        n_targets = len(classes) - 1
    strengths = cfg.strengths
    if strengths is None:
        strengths = adapter.metadata.get("default_strengths")
        if not strengths:
            raise ConfigError(f"model {adapter.name} has no default_strengths: set strengths")
    try:
        attack = AttackConfig(
            **dataclasses.asdict(cfg.attack), strengths=tuple(float(s) for s in strengths), seed=cfg.seed
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid attack config: {e}") from e
    limit = layout.max_targets_per_file(len(attack.strengths))
    if cfg.target_chunk is not None and cfg.target_chunk > limit:
        raise ConfigError(
            f"target_chunk {cfg.target_chunk} is too large: a nodes/edges file with more than {limit} "
            f"targets at {len(attack.strengths)} strengths has a Parquet footer larger than the "
            "viewer's first 16 KiB read"
        )
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
