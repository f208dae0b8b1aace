"""Run configuration: loading (TOML/YAML + CLI overrides), validation, resolution, config hash."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bluff_ray import cli
from bluff_ray.engine.models.base import ModelAdapter
from bluff_ray.results.store import redact_url
from bluff_ray.run.config import (
    ConfigError,
    RunConfig,
    diff_fields,
    field_table,
    from_dict,
    load,
    mismatch_message,
    parse_options,
    resolve,
    sections,
)


def fake_adapter(names=("zero", "one", "two", "three"), ids=None, strengths=(0.5, 1.0)) -> ModelAdapter:
    """Only the class list and metadata matter for resolve()."""
    return ModelAdapter(
        name="fake",
        model=None,
        blocks=[],
        layers=[],
        input_pools=[],
        class_names=list(names),
        class_ids=list(ids or [str(i) for i in range(len(names))]),
        input_shape=(1, 8, 8),
        input_space="test",
        load_image=None,
        metadata={"default_strengths": strengths},
    )


TOML = """
model = "digits"
classes = ["zero", 2, "3"]
images_per_class = 7
strengths = [0.5, 1.5]
seed = 4

[attack]
steps = 12
method = "pgd_linf"

[pathways]
k = 6

[assets]
enabled = false
"""

YAML = """
model: digits
classes: [zero, 2, "3"]
images_per_class: 7
strengths: [0.5, 1.5]
seed: 4
attack: {steps: 12, method: pgd_linf}
pathways: {k: 6}
assets: {enabled: false}
"""


def test_toml_and_yaml_give_the_same_config(tmp_path):
    t = tmp_path / "run.toml"
    t.write_text(TOML)
    y = tmp_path / "run.yaml"
    y.write_text(YAML)
    a, b = load(str(t)), load(str(y))
    assert a == b
    assert a.attack.steps == 12 and a.attack.method == "pgd_linf"
    assert a.pathways.k == 6 and a.assets.enabled is False
    assert a.strengths == [0.5, 1.5] and a.images_per_class == 7 and a.seed == 4


def test_cli_overrides_file_which_overrides_defaults(tmp_path):
    t = tmp_path / "run.toml"
    t.write_text(TOML)
    args = cli.build_parser().parse_args(
        [
            "run",
            "--config",
            str(t),
            "--attack-steps",
            "3",
            "--no-assets-enabled",
            "--seed",
            "9",
            "--storage-option",
            "endpoint_url=http://x:1",
            "--storage-option",
            "anon=false",
            "--classes",
            "1,2",
            "--set",
            "pathways.k=8",
            "--set",
            "seed=5",
            "--set",
            "storage_options.max_concurrency=4",
        ]
    )
    cfg = cli.config_from_args(args)
    assert cfg.attack.steps == 3  # CLI
    assert cfg.attack.method == "pgd_linf"  # file
    assert cfg.attack.step_ratio == RunConfig().attack.step_ratio  # default
    assert cfg.seed == 9 and cfg.classes == ["1", "2"] and cfg.assets.enabled is False  # --seed beats --set
    assert cfg.pathways.k == 8 and cfg.images_per_class == 7  # --set, file
    assert cfg.storage_options == {"endpoint_url": "http://x:1", "anon": False, "max_concurrency": 4}


def _run_help() -> str:
    return cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()


def test_every_config_field_is_a_cli_option_with_its_description_as_help():
    """The options are generated from the declarations: every field (nested ones too, including any a
    colleague adds) has its option, and its description, bounds and default are the help text."""
    helptext = " ".join(_run_help().split()).replace("- ", "-")  # argparse wraps lines at hyphens too
    keys = [(n, f) for n, (f, _) in field_table().items() if n not in sections()]
    keys += [(f"{s}.{n}", f) for s, cls in sections().items() for n, (f, _) in field_table(cls).items()]
    assert len(keys) > 40
    for key, f in keys:
        flag = "--storage-option" if key == "storage_options" else "--" + key.replace(".", "-").replace("_", "-")
        assert flag in helptext, flag
        description = f.metadata["description"]
        assert description and " ".join(description.split()).replace("- ", "-") in helptext, key
    assert "--attack-steps INT PGD iterations (1..10,000; default: 50)" in helptext
    # strengths and seed have one home: the top level, not [attack]
    assert "--attack-strengths" not in helptext and "--attack-seed" not in helptext
    assert not hasattr(RunConfig().attack, "strengths") and not hasattr(RunConfig().attack, "seed")


def test_cli_values_are_typed_by_their_field_and_errors_name_the_key():
    parser = cli.build_parser()
    for argv, msg in [
        (["--attack-steps", "x"], "attack.steps: input should be a valid integer"),
        (["--attack-steps", "1000000000000"], "attack.steps: input should be less than or equal to 10000"),
        (["--set", "attack.stepz=3"], "unknown [attack] key 'stepz'; did you mean step, steps?"),
        (["--set", "modle=digits"], "did you mean model"),
        (["--set", "nokey"], "expected KEY=VALUE"),
        (["--storage-option", "=x"], "expected KEY=VALUE"),
        (["--worker-timeout-s", "nan"], "worker_timeout_s: input should be a finite number"),
        (["--strengths", "0.2,0.1"], "strengths: must be strictly ascending"),
    ]:
        args = parser.parse_args(["run", *argv])
        with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("?", r"\?")):
            cli.config_from_args(args)


def test_bluff_run_refuses_an_endless_attack_in_one_line_with_exit_2(tmp_path, capsys):
    """``attack.steps = 10**12`` (file or option) stops before anything starts: exit 2, one line."""
    conf = tmp_path / "run.toml"
    conf.write_text("[attack]\nsteps = 1000000000000\n")
    for argv in (
        ["run", "--config", str(conf)],
        ["run", "--attack-steps", str(10**12)],
        ["run", "--set", "attack.steps=1000000000000"],
    ):
        assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "attack.steps" in err and "10000" in err, err
    assert not (tmp_path / "out").exists()


def test_one_key_value_parser_for_storage_options(monkeypatch):
    """--storage-option means the same in run and publish: true/false are booleans, numbers written
    plainly are numbers, anything else (even 08 or 1e3, e.g. a key) stays text."""
    from bluff_ray.web import publish

    items = ["anon=false", "endpoint_url=http://h:9=x", "max_concurrency=8", "key=0123", "secret=1e3", " k = v "]
    want = {
        "anon": False,
        "endpoint_url": "http://h:9=x",
        "max_concurrency": 8,
        "key": "0123",
        "secret": "1e3",
        "k": "v",
    }
    assert parse_options(items) == want
    seen = {}
    monkeypatch.setattr(publish, "publish", lambda *a, storage_options=None, **k: seen.update(storage_options))
    argv = ["publish", "./r", "s3://b/p", *[a for i in items for a in ("--storage-option", i)]]
    cli.main(argv)
    assert seen == want
    args = cli.build_parser().parse_args(["run", *[a for i in items for a in ("--storage-option", i)]])
    assert cli.config_from_args(args).storage_options == want


@pytest.mark.parametrize(
    "values, message",
    [
        ({"strengths": [0.5, 0.2]}, "strengths: must be strictly ascending"),
        ({"strengths": [-1.0]}, r"strengths\[0\]: input should be greater than 0, got -1.0"),
        ({"strengths": "abc"}, "strengths: must be numbers"),
        ({"strengths": []}, "strengths: list should have at least 1 item"),
        ({"images_per_class": 0}, "images_per_class: input should be greater than or equal to 1, got 0"),
        ({"attack": {"method": "cw"}}, "attack: unknown attack method 'cw'"),
        ({"attack": {"stepz": 3}}, "did you mean step, steps"),
        ({"attack": {"strengths": [1.0]}}, "top level"),
        ({"attack": {"seed": 1}}, "top level"),
        ({"attack": {"steps": 10**12}}, "attack.steps: input should be less than or equal to 10000"),
        ({"attack": {"steps": 2.5}}, "attack.steps: input should be a valid integer"),
        ({"attack": 3}, r"attack: must be a table of keys \(KEY = VALUE\), got 3"),
        ({"pathways": {"k": 1}}, "pathways.k: input should be greater than or equal to 2"),
        ({"pathways": {"min_edge_influence": float("nan")}}, "pathways.min_edge_influence: input should be a finite"),
        ({"assets": {"fv_steps": 10**9}}, "assets.fv_steps: input should be less than or equal to 100000"),
        ({"modle": "digits"}, "did you mean model"),
        ({"seed": "x"}, "seed: input should be a valid integer, got 'x'"),
        ({"seed": "3"}, "seed: input should be a valid integer, got '3'"),  # files are typed: no "3" for 3
        ({"device": "gpu"}, "device: string should match pattern"),
        ({"images_per_class": 10**9}, "images_per_class: input should be less than or equal to 100000"),
        ({"storage_options": "secret=abc"}, r"storage_options: must be a table of keys \(KEY = VALUE\)$"),
    ],
)
def test_invalid_values_are_refused_with_a_clear_message(values, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(values)


def test_unknown_class_name_lists_close_matches():
    a = fake_adapter()
    with pytest.raises(ConfigError, match=r"unknown class 'thre'.*'three'"):
        resolve(RunConfig(classes=["thre", "one"]), a)
    with pytest.raises(ConfigError, match="out of range"):
        resolve(RunConfig(classes=[0, 9]), a)


def test_resolve_pairs_classes_and_default_strengths():
    a = fake_adapter()
    r = resolve(RunConfig(classes=["zero", "2", 3]), a)
    assert r.classes == (0, 2, 3)
    assert r.pairs == tuple((o, t) for o in (0, 2, 3) for t in (0, 2, 3) if o != t)
    assert r.strengths == (0.5, 1.0)  # the model's default_strengths
    r = resolve(RunConfig(pairs=["one:three", "0:1"]), a)
    assert r.pairs == ((0, 1), (1, 3)) and r.classes == (0, 1, 3)
    with pytest.raises(ConfigError, match="same class"):
        resolve(RunConfig(pairs=["1:1"]), a)
    with pytest.raises(ConfigError, match="outside the selected classes"):
        resolve(RunConfig(classes=[0, 1], pairs=["0:2"]), a)


def test_config_hash_covers_result_fields_only():
    """The results identity: what changes a pair's numbers, not where they go, how fast they are
    computed, nor which classes, originals or pairs are selected (a root can grow)."""
    a = fake_adapter()
    base = resolve(RunConfig(classes=[0, 1]), a)
    same = [
        RunConfig(classes=[1, 0], num_workers=7, out="s3://elsewhere/x", storage_options={"key": "k"}, progress=False),
        RunConfig(classes=["zero", "one"], strengths=[0.5, 1.0]),  # explicit = default strengths
        # the selection: other classes, originals or pairs
        RunConfig(classes=[0, 2]),
        RunConfig(),
        RunConfig(originals=[3]),
        RunConfig(pairs=["1:3", "2:0"]),
        RunConfig(device="cpu", model_cache="/m"),
        # speed knobs: random starts are drawn per block of samples, so batches change no result
        RunConfig(
            classes=[0, 1],
            attack_batch_size=64,
            benign_batch_size=7,
            worker_timeout_s=5,
            node_cache="/x",
            attack=dataclasses.replace(RunConfig().attack, compile=True),
            pathways=dataclasses.replace(RunConfig().pathways, batch_size=3),
        ),
    ]
    for cfg in same:
        assert resolve(cfg, a).config_hash() == base.config_hash()
    changed = {
        "attack.steps": RunConfig(classes=[0, 1], attack=dataclasses.replace(RunConfig().attack, steps=3)),
        "seed": RunConfig(classes=[0, 1], seed=1),
        "strengths": RunConfig(classes=[0, 1], strengths=[0.5]),
        "images_per_class": RunConfig(classes=[0, 1], images_per_class=3),
        "data": RunConfig(classes=[0, 1], data="synthetic"),
        "target_chunk": RunConfig(classes=[0, 1], target_chunk=1),
        "assets.fv_steps": RunConfig(classes=[0, 1], assets=dataclasses.replace(RunConfig().assets, fv_steps=3)),
        "pathways.k": RunConfig(classes=[0, 1], pathways=dataclasses.replace(RunConfig().pathways, k=4)),
        "pathways.causal": RunConfig(classes=[0, 1], pathways=dataclasses.replace(RunConfig().pathways, causal=False)),
        "attack.bf16": RunConfig(classes=[0, 1], attack=dataclasses.replace(RunConfig().attack, bf16=True)),
    }
    for field_name, cfg in changed.items():
        other = resolve(cfg, a)
        assert other.config_hash() != base.config_hash(), field_name
        assert field_name in diff_fields(base.canonical(), other.canonical())
    json.dumps(base.canonical())  # plain JSON
    for name in ("storage_options", "out", "classes", "originals", "pairs", "num_workers", "device"):
        assert name not in base.canonical(), name
    assert resolve(RunConfig(originals=[3]), a).selection() == {
        "classes": [0, 1, 2, 3],
        "pairs": "all",
        "originals": [3],
        "target_chunk": 3,
    }


def test_mismatch_message_names_the_differing_fields_and_values():
    a = fake_adapter()
    old = resolve(RunConfig(), a).canonical()
    new = resolve(RunConfig(seed=5, attack=dataclasses.replace(RunConfig().attack, steps=3)), a).canonical()
    msg = mismatch_message("s3://b/r", old, new)
    assert "s3://b/r already holds results of a different run configuration" in msg
    assert "(differing: attack.steps (50 -> 3), seed (0 -> 5))" in msg and "--overwrite" in msg
    assert "\n" not in msg


def test_redact_url_removes_userinfo():
    assert redact_url("s3://AKIA:secret@bucket/x") == "s3://bucket/x"
    assert redact_url("/local/path") == "/local/path"


def test_demo_config_is_every_digit_pair_at_the_default_strengths():
    from bluff_ray.engine.models import load_model

    adapter = load_model("digits")
    r = resolve(cli.demo_config("./bluff-results"), adapter)
    assert len(r.pairs) == 90 and r.classes == tuple(range(10))
    assert r.strengths == tuple(adapter.metadata["default_strengths"]) and len(r.strengths) == 10
    assert r.attack.steps == 50 and r.config.assets.enabled  # the paper's attack, not a cheaper one
    assert r.config.images_per_class == cli.DEMO_IMAGES_PER_CLASS == 32
    assert r.target_chunk == 3  # 30 units of 3 targets: the progress bar moves often
    # ... and each unit's whole attack grid (3 targets x 10 strengths x 32 images) is one batch
    assert 3 * 10 * 32 <= r.config.attack_batch_size
    # bluff demo's options are the RunConfig ones, with the demo's defaults
    assert cli.config_from_args(cli.build_parser().parse_args(["demo"]), base=cli.DEMO) == cli.demo_config()
    args = cli.build_parser().parse_args(["demo", "--workers", "2", "--classes", "0,1", "--images-per-class", "4"])
    cfg = cli.config_from_args(args, base=cli.DEMO)
    assert (cfg.num_workers, cfg.classes, cfg.images_per_class) == (2, ["0", "1"], 4)
    demo_help = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["demo"].format_help().split())
    assert "use at most this many images per class (1..100,000; default: 32)" in demo_help


def test_bad_values_are_refused_with_the_field_named():
    from bluff_ray.run.config import from_dict

    for values, msg in [
        ({"strengths": [True]}, r"strengths\[0\]: input should be a valid number, got True"),
        ({"strengths": [0.1, "x"]}, "strengths: must be numbers"),
        ({"model": "resnet"}, "unknown model 'resnet'"),
        ({"model": "googlenett"}, "did you mean 'googlenet'"),
        ({"attack_batch_size": 0}, "attack_batch_size"),
        ({"worker_timeout_s": -1}, "worker_timeout_s"),
        ({"num_workers": True}, "num_workers"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            from_dict(values)
    with pytest.raises(ConfigError, match=r"strengths\[0\]: input should be a valid number"):
        RunConfig(strengths=[True, 2.0])
    with pytest.raises(ValueError, match="steps must be <= 10000"):  # the [attack] table checks itself too
        dataclasses.replace(RunConfig().attack, steps=10**12)


def test_target_chunk_defaults_to_and_is_capped_by_the_footer_limit():
    from bluff_ray.results import layout

    a = fake_adapter()
    limit = layout.max_targets_per_file(2)
    many = RunConfig(classes=None)
    assert resolve(many, a).target_chunk == min(limit, len(a.class_ids) - 1)
    with pytest.raises(ConfigError, match="too large"):
        resolve(RunConfig(target_chunk=limit + 1), a)


class _Counting(list):
    """A class list that counts the scans resolve() makes of it (iterations, index, membership)."""

    scans = 0

    def __iter__(self):
        type(self).scans += 1
        return super().__iter__()

    def index(self, *a):
        type(self).scans += 1000
        return super().index(*a)

    def __contains__(self, x):
        type(self).scans += 1000
        return super().__contains__(x)


def test_resolve_is_linear_in_classes_and_originals():
    """1,000 classes x 1,000 originals (999,000 pairs), named by wnid and name, resolve in well under a
    second (the quadratic version took 15 s); names are looked up in one ClassIndex, so the model's class
    lists are read a constant number of times, never scanned per token. BENCHMARKS.md has the scaling
    ratio (bench/resolve.py)."""
    n = 1000
    ids, names = _Counting(f"n{i:08d}" for i in range(n)), _Counting(f"class {i}" for i in range(n))
    a = fake_adapter(names=names, ids=ids)
    a.class_ids, a.class_names = ids, names
    _Counting.scans = 0
    tokens = [f"n{i:08d}" if i % 2 else f"Class {i}" for i in range(n)]
    r = resolve(RunConfig(classes=tokens, originals=list(range(n))), a)
    assert len(r.pairs) == n * (n - 1) == 999_000 and r.classes == tuple(range(n))
    assert r.pairs[:2] == ((0, 1), (0, 2)) and r.pairs[-1] == (999, 998)
    assert _Counting.scans <= 4, _Counting.scans
    explicit = resolve(RunConfig(pairs=[f"{o}:{(o + 1) % n}" for o in range(n)]), a)
    assert len(explicit.pairs) == n and explicit.target_chunk == 1
    assert _Counting.scans <= 8, _Counting.scans


@pytest.mark.parametrize(
    ("flag", "expected"), [([], "size"), (["--verify", "checksum"], "checksum"), (["--verify", "none"], None)]
)
def test_bluff_run_verify_option_reaches_the_driver(monkeypatch, tmp_path, flag, expected):
    from bluff_ray.run import driver

    seen = {}

    class Summary:
        failed = stopped = False

        def report(self) -> str:
            return "ok"

    def fake_run(cfg, overwrite=False, ray_address=None, verify="size"):
        seen.update(verify=verify, out=cfg.out)
        return Summary()

    monkeypatch.setattr(driver, "run", fake_run)
    assert cli.main(["run", "--out", str(tmp_path), *flag]) == 0
    assert seen == {"verify": expected, "out": str(tmp_path)}
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--out", str(tmp_path), "--verify", "sometimes"])
    assert e.value.code == 2
