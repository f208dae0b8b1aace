"""Run configuration: loading (TOML/YAML + CLI overrides), validation, resolution, config hash."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bluff_ray import cli
from bluff_ray.run.config import (
    FIELD_HELP,
    NESTED,
    ConfigError,
    RunConfig,
    diff_fields,
    from_dict,
    load,
    nested_fields,
    resolve,
)
from bluff_ray.results.store import redact_url
from bluff_ray.engine.models.base import ModelAdapter


def fake_adapter(names=("zero", "one", "two", "three"), ids=None, strengths=(0.5, 1.0)) -> ModelAdapter:
    """Only the class list and metadata matter for resolve()."""
    return ModelAdapter(name="fake", model=None, blocks=[], layers=[], input_pools=[], class_names=list(names),
                        class_ids=list(ids or [str(i) for i in range(len(names))]), input_shape=(1, 8, 8),
                        input_space="test", load_image=None, metadata={"default_strengths": strengths})


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
        ["run", "--config", str(t), "--attack-steps", "3", "--no-assets-enabled", "--seed", "9",
         "--storage-option", "endpoint_url=http://x:1", "--storage-option", "anon=false", "--classes", "1,2"]
    )
    cfg = cli.config_from_args(args)
    assert cfg.attack.steps == 3  # CLI
    assert cfg.attack.method == "pgd_linf"  # file
    assert cfg.attack.step_ratio == RunConfig().attack.step_ratio  # default
    assert cfg.seed == 9 and cfg.classes == ["1", "2"] and cfg.assets.enabled is False
    assert cfg.storage_options == {"endpoint_url": "http://x:1", "anon": False}


def test_every_config_field_has_a_documented_cli_option():
    helptext = cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for f in dataclasses.fields(RunConfig):
        if f.name in NESTED:
            for nf in nested_fields(f.name):
                flag = f"--{f.name}-{nf.name}".replace("_", "-")
                assert flag in helptext, flag
                assert f"{f.name}.{nf.name}" in FIELD_HELP, f"no help for {f.name}.{nf.name}"
        else:
            flag = "--storage-option" if f.name == "storage_options" else "--" + f.name.replace("_", "-")
            assert flag in helptext, flag
            assert f.name in FIELD_HELP


@pytest.mark.parametrize(
    "values, message",
    [
        ({"strengths": [0.5, 0.2]}, "ascending"),
        ({"strengths": [-1.0]}, "> 0"),
        ({"strengths": "abc"}, "numbers"),
        ({"images_per_class": 0}, "positive"),
        ({"attack": {"method": "cw"}}, "unknown attack method"),
        ({"attack": {"stepz": 3}}, "did you mean steps"),
        ({"attack": {"strengths": [1.0]}}, "top level"),
        ({"pathways": {"k": 1}}, "k must be"),
        ({"modle": "digits"}, "did you mean model"),
        ({"seed": "x"}, "seed must be a int"),
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
    a = fake_adapter()
    base = resolve(RunConfig(classes=[0, 1]), a)
    same = [
        RunConfig(classes=[1, 0], num_workers=7, out="s3://elsewhere/x", storage_options={"key": "k"}, progress=False),
        RunConfig(classes=["zero", "one"], strengths=[0.5, 1.0]),  # explicit = default strengths
        # speed knobs: random starts are drawn per block of samples, so batches change no result
        RunConfig(classes=[0, 1], attack_batch_size=64, benign_batch_size=7, worker_timeout_s=5, node_cache="/x",
                  attack=dataclasses.replace(RunConfig().attack, compile=True),
                  pathways=dataclasses.replace(RunConfig().pathways, batch_size=3)),
    ]
    for cfg in same:
        assert resolve(cfg, a).config_hash() == base.config_hash()
    changed = {
        "attack.steps": RunConfig(classes=[0, 1], attack=dataclasses.replace(RunConfig().attack, steps=3)),
        "seed": RunConfig(classes=[0, 1], seed=1),
        "classes": RunConfig(classes=[0, 2]),
        "pathways.k": RunConfig(classes=[0, 1], pathways=dataclasses.replace(RunConfig().pathways, k=4)),
        "pathways.causal": RunConfig(classes=[0, 1], pathways=dataclasses.replace(RunConfig().pathways, causal=False)),
        "attack.bf16": RunConfig(classes=[0, 1], attack=dataclasses.replace(RunConfig().attack, bf16=True)),
    }
    for field_name, cfg in changed.items():
        other = resolve(cfg, a)
        assert other.config_hash() != base.config_hash(), field_name
        assert field_name in diff_fields(base.canonical(), other.canonical())
    json.dumps(base.canonical())  # plain JSON
    assert "storage_options" not in base.canonical() and "out" not in base.canonical()


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
    assert cli.build_parser().parse_args(["demo"]).images_per_class == 32


def test_bad_values_are_refused_with_the_field_named():
    from bluff_ray.run.config import from_dict

    for values, msg in [
        ({"strengths": [True]}, "strengths must be numbers"),
        ({"strengths": [0.1, "x"]}, "strengths must be numbers"),
        ({"model": "resnet"}, "unknown model 'resnet'"),
        ({"model": "googlenett"}, "did you mean 'googlenet'"),
        ({"attack_batch_size": 0}, "attack_batch_size"),
        ({"worker_timeout_s": -1}, "worker_timeout_s"),
        ({"num_workers": True}, "num_workers"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            from_dict(values)
    with pytest.raises(ConfigError, match="strengths must be numbers"):
        RunConfig(strengths=[True, 2.0])


def test_target_chunk_defaults_to_and_is_capped_by_the_footer_limit():
    from bluff_ray.results import layout

    a = fake_adapter()
    limit = layout.max_targets_per_file(2)
    many = RunConfig(classes=None)
    assert resolve(many, a).target_chunk == min(limit, len(a.class_ids) - 1)
    with pytest.raises(ConfigError, match="too large"):
        resolve(RunConfig(target_chunk=limit + 1), a)
