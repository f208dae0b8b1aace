"""Model adapters: the digits demo net (training, determinism, cache) and torchvision GoogLeNet
(layer table, input composition, weight loading from files and fsspec URLs, clear errors)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models.googlenet import BasicConv2d
from torchvision.transforms import functional as TF

from bluff_ray.engine.models import MODEL_NAMES, load_model
from bluff_ray.engine.models import digits as digits_mod
from bluff_ray.engine.models.base import BRANCHES, ModelAdapter
from bluff_ray.engine.models.digits import DigitsTrainConfig, digits_split, train_digits
from bluff_ray.engine.models.googlenet import googlenet_adapter, imagenet_wnids, load_googlenet
from bluff_ray.run.models import load_model as run_load_model

# Published GoogLeNet table (Szegedy et al. 2015, Table 1): #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
GOOGLENET_TABLE = {
    "mixed3a": (64, 96, 128, 16, 32, 32),
    "mixed3b": (128, 128, 192, 32, 96, 64),
    "mixed4a": (192, 96, 208, 16, 48, 64),
    "mixed4b": (160, 112, 224, 24, 64, 64),
    "mixed4c": (128, 128, 256, 24, 64, 64),
    "mixed4d": (112, 144, 288, 32, 64, 64),
    "mixed4e": (256, 160, 320, 32, 128, 128),
    "mixed5a": (256, 160, 320, 32, 128, 128),
    "mixed5b": (384, 192, 384, 48, 128, 128),
}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    # $BLUFF_CACHE if the session sets one, else the session's base temp dir (shared by all test
    # modules): either way the digits net trains at most once per run.
    env = os.environ.get("BLUFF_CACHE")
    return Path(env) if env else tmp_path_factory.getbasetemp() / "bluff-digits-cache"


@pytest.fixture(scope="module")
def digits(shared_cache) -> ModelAdapter:
    return train_digits(seed=0, cache_dir=shared_cache)


@pytest.fixture(scope="module")
def tv_googlenet():
    torch.manual_seed(0)
    return torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()


def _chain_check(adapter: ModelAdapter, x: torch.Tensor) -> None:
    """Block i applied to input_pools[i](activation of block i-1) reproduces activation i."""
    _, acts = adapter.forward_with_activations(x)
    assert list(acts) == adapter.layer_names
    with torch.no_grad():
        for i in range(1, len(adapter.blocks)):
            prev = acts[adapter.layer_names[i - 1]]
            again = adapter.blocks[i](adapter.input_pools[i](prev))
            torch.testing.assert_close(again, acts[adapter.layer_names[i]], rtol=0, atol=1e-5)
    for info in adapter.layers:
        act = acts[info.name]
        assert act.shape[1] == info.channels == sum(info.branch_sizes)
        assert (act >= 0).all()  # post-ReLU


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_stratified_deterministic_and_disjoint():
    xtr, ytr = digits_split("train")
    xte, yte = digits_split("test")
    assert xtr.shape == (1257, 1, 8, 8) and xte.shape == (540, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert 0 <= xtr.min() and xtr.max() <= 1 and xte.max() == 1.0
    # stratified: every class is ~30% test
    frac = torch.bincount(yte, minlength=10).float() / (
        torch.bincount(ytr, minlength=10) + torch.bincount(yte, minlength=10)
    )
    assert ((frac - 0.3).abs() < 0.02).all()
    x2, y2 = digits_split("test")
    assert torch.equal(x2, xte) and torch.equal(y2, yte)
    # disjoint: no test image also appears in train (the dataset has no exact duplicates across split)
    tr = {bytes(r.numpy()) for r in xtr.flatten(1)}
    assert sum(bytes(r.numpy()) in tr for r in xte.flatten(1)) <= 2
    assert not torch.equal(digits_split("test", seed=1)[1], yte)
    with pytest.raises(ValueError, match="train"):
        digits_split("val")


def test_digits_accuracy_layout_and_metadata(digits):
    x, y = digits_split("test")
    with torch.no_grad():
        acc = (digits.model(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.95
    assert digits.metadata["test_accuracy"] == pytest.approx(acc)
    assert digits.layer_names == ["mixed3a", "mixed3b", "mixed4a", "mixed4b"]
    assert all(24 <= l.channels <= 64 for l in digits.layers)
    assert digits.class_ids == [str(i) for i in range(10)] and len(digits.class_names) == 10
    assert digits.input_shape == (1, 8, 8) and "[0, 1]" in digits.input_space
    s = digits.metadata["default_strengths"]
    assert len(s) == 10 and list(s) == sorted(s) and np.allclose(np.diff(s), s[1] - s[0])
    assert len(digits.metadata["checkpoint_sha256"]) == 64
    for block, info in zip(digits.blocks, digits.layers):
        assert isinstance(block.branch1, BasicConv2d)
        assert block.branch2[1].conv.kernel_size == (3, 3) and block.branch3[1].conv.kernel_size == (5, 5)
        assert isinstance(block.branch4[0], torch.nn.MaxPool2d)
        assert info.bottleneck_sizes == (block.branch2[0].conv.out_channels, block.branch3[0].conv.out_channels)
    assert not digits.model.training
    _chain_check(digits, x[:16])


def test_digits_cache_is_reused_without_training(digits, shared_cache, monkeypatch):
    ckpt = shared_cache / f"digits-{DigitsTrainConfig().key(0)}.pt"
    assert ckpt.is_file() and not list(shared_cache.glob("*.tmp"))
    assert digits.metadata["weights"] == str(ckpt)
    mtime = ckpt.stat().st_mtime_ns

    def no_training(*a, **k):
        raise AssertionError("a cached checkpoint must not be retrained")

    monkeypatch.setattr(digits_mod, "_fit", no_training)
    again = load_model("digits", cache_dir=str(shared_cache))
    assert again.metadata["trained_now"] is False
    assert ckpt.stat().st_mtime_ns == mtime
    assert again.metadata["checkpoint_sha256"] == digits.metadata["checkpoint_sha256"]
    for k, v in digits.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k])
    # A different recipe is a different file: it would have to train.
    with pytest.raises(AssertionError, match="must not be retrained"):
        train_digits(seed=1, cache_dir=shared_cache)


def test_digits_training_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.delenv("BLUFF_CACHE", raising=False)
    cfg = DigitsTrainConfig(epochs=1, batch_size=256)  # cheap: 5 steps
    a = train_digits(seed=3, cache_dir=tmp_path / "a", config=cfg)
    b = train_digits(seed=3, cache_dir=tmp_path / "b", config=cfg)
    c = train_digits(seed=4, cache_dir=tmp_path / "c", config=cfg)
    assert a.metadata["trained_now"] and b.metadata["trained_now"]
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)  # the seed matters
    fa = (tmp_path / "a").glob("digits-*.pt").__next__()
    fb = (tmp_path / "b").glob("digits-*.pt").__next__()
    assert fa.name == fb.name and fa.read_bytes() == fb.read_bytes()
    assert a.metadata["checkpoint_key"] == cfg.key(3) != cfg.key(4) != DigitsTrainConfig().key(3)


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BLUFF_CACHE", str(tmp_path / "envcache"))
    assert digits_mod.default_cache_dir() == tmp_path / "envcache"


def test_digits_weights_from_fsspec_url(digits):
    buf = io.BytesIO()
    torch.save(digits.model.state_dict(), buf)
    with fsspec.open("memory://h1/digits.pt", "wb") as f:
        f.write(buf.getvalue())
    other = run_load_model("digits", weights="memory://h1/digits.pt")  # URLs: the run layer reads them
    x, _ = digits_split("test")
    with torch.no_grad():
        assert torch.equal(other.model(x[:32]), digits.model(x[:32]))
    assert other.metadata["test_accuracy"] == pytest.approx(digits.metadata["test_accuracy"])


def test_digits_load_image_roundtrip():
    x, _ = digits_split("test")
    arr = (x[7, 0].numpy() * 255).round().astype(np.uint8)
    img = digits_mod.load_digit_image(Image.fromarray(arr))
    assert img.shape == (1, 8, 8)
    torch.testing.assert_close(img, x[7], atol=1 / 255, rtol=0)
    big = Image.fromarray(np.kron(arr, np.ones((4, 4), np.uint8))).convert("RGB")  # 32x32 RGB
    torch.testing.assert_close(digits_mod.load_digit_image(big), x[7], atol=2 / 255, rtol=0)


def _randomize_batchnorm_stats(net: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("which", ["digits", "googlenet"])
def test_attack_model_folds_batchnorm_and_computes_the_same_function(which, digits, tv_googlenet):
    """The attack runs on ``attack_model()``: no BatchNorm left, channels_last weights, frozen, and
    the same logits and input gradients as the model itself (checked through autograd on both)."""
    if which == "digits":
        a, x = digits, torch.rand(16, 1, 8, 8)
    else:
        import copy

        net = copy.deepcopy(tv_googlenet)
        _randomize_batchnorm_stats(net)
        a, x = googlenet_adapter(net), torch.rand(2, 3, 64, 64)
    folded = a.attack_model()
    assert folded is a.attack_model()  # built once
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in a.model.modules())
    assert n_bn > 0  # the original keeps its BatchNorms (importance/influence read them)
    assert all(not p.requires_grad for p in folded.parameters())
    convs = [m for m in folded.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    xa = x.clone().requires_grad_(True)
    xb = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    la, lb = a.model(xa), folded(xb)
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-4)
    (ga,) = torch.autograd.grad(la[:, 3].sum(), xa)
    (gb,) = torch.autograd.grad(lb[:, 3].sum(), xb)
    torch.testing.assert_close(gb, ga, rtol=1e-3, atol=1e-5)
    a.to("cpu")
    assert a._attack_model is None  # moving the model invalidates the cached copy


# ----------------------------------------------------------------------------- googlenet


def test_googlenet_layers_match_published_table(tv_googlenet):
    a = googlenet_adapter(tv_googlenet)
    assert a.layer_names == list(GOOGLENET_TABLE)
    for info in a.layers:
        c1, r3, c3, r5, c5, cp = GOOGLENET_TABLE[info.name]
        assert info.branch_sizes == (c1, c3, c5, cp) and info.bottleneck_sizes == (r3, r5)
        assert info.channels == c1 + c3 + c5 + cp
        assert info.branch_of(0) == 0 and info.branch_of(info.channels - 1) == 3
        assert info.branch_offset(2) == c1 + c3
    pools = [type(p).__name__ for p in a.input_pools]
    assert pools == ["Identity", "Identity", "MaxPool2d"] + ["Identity"] * 4 + ["MaxPool2d", "Identity"]
    assert a.input_pools[2] is tv_googlenet.maxpool3 and a.input_pools[7] is tv_googlenet.maxpool4
    assert len(BRANCHES) == 4


def test_googlenet_forward_shapes_and_chain(tv_googlenet):
    a = googlenet_adapter(tv_googlenet)
    x = torch.rand(1, 3, 224, 224)
    logits, acts = a.forward_with_activations(x, layers=["mixed3a", "mixed4e", "mixed5b"])
    assert logits.shape == (1, 1000)
    assert {k: tuple(v.shape) for k, v in acts.items()} == {
        "mixed3a": (1, 256, 28, 28),
        "mixed4e": (1, 832, 14, 14),
        "mixed5b": (1, 1024, 7, 7),
    }
    _chain_check(a, torch.rand(1, 3, 96, 96))


def test_googlenet_input_composition(tv_googlenet):
    """[0,1] -> ImageNet normalise -> net; with transform_input=True the net then sees (x-0.5)/0.5."""
    a = googlenet_adapter(tv_googlenet)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = tv_googlenet(TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
        torch.testing.assert_close(a.model(x), expected)
        plain = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False, transform_input=False)
        plain.load_state_dict(tv_googlenet.state_dict())
        plain.eval()
        with_ti = googlenet_adapter(
            torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False, transform_input=True)
        )
        with_ti.model.net.load_state_dict(tv_googlenet.state_dict())
        torch.testing.assert_close(with_ti.model(x), plain(x * 2 - 1), atol=1e-4, rtol=1e-4)
    assert with_ti.metadata["transform_input"] is True


def test_googlenet_classes_and_load_image(tv_googlenet):
    a = googlenet_adapter(tv_googlenet)
    assert len(a.class_ids) == len(a.class_names) == 1000
    assert a.class_ids == sorted(a.class_ids) and len(set(a.class_ids)) == 1000
    assert (a.class_ids[0], a.class_names[0]) == ("n01440764", "tench")
    assert (a.class_ids[281], a.class_names[281]) == ("n02123045", "tabby")  # tabby cat
    assert imagenet_wnids() == a.class_ids
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    t = a.load_image(img)
    assert t.shape == (3, 224, 224) and 0 <= t.min() and t.max() <= 1
    assert a.load_image(img.convert("L")).shape == (3, 224, 224)


def test_googlenet_weights_from_file_and_fsspec_give_identical_logits(tv_googlenet, tmp_path):
    # A checkpoint with auxiliary heads (like torchvision's IMAGENET1K_V1 file) loads too.
    torch.manual_seed(1)
    src = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).eval()
    state = src.state_dict()
    assert any(k.startswith("aux1.") for k in state)
    path = tmp_path / "googlenet.pth"
    torch.save(state, path)
    buf = io.BytesIO()
    torch.save(state, buf)
    with fsspec.open("memory://h1/googlenet.pth", "wb") as f:
        f.write(buf.getvalue())
    x = torch.rand(2, 3, 96, 96)
    out = []
    for w in (str(path), f"file://{path}", "memory://h1/googlenet.pth"):
        a = run_load_model("googlenet", weights=w)
        assert a.metadata["weights"] == w and not a.model.training
        with torch.no_grad():
            out.append(a.model(x))
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    src.aux_logits = False
    with torch.no_grad():
        # transform_input=True by default (torchvision's weights); compose by hand for the check
        ref = googlenet_adapter(src).model.net
        ref.transform_input = True
        torch.testing.assert_close(out[0], ref(TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])))


def test_googlenet_missing_or_bad_weights_name_the_options(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    for w in ("torchvision", str(tmp_path / "nope.pth"), "memory://h1/nope.pth"):
        with pytest.raises(FileNotFoundError) as e:
            run_load_model("googlenet", weights=w)
        msg = str(e.value)
        assert "torchvision" in msg and ".pth" in msg and "s3://" in msg and "file" in msg
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="state_dict"):
        load_googlenet(str(bad))
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="GoogLeNet"):
        load_googlenet(str(tmp_path / "wrong.pth"))


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        load_model("resnet50")
    for name in MODEL_NAMES:
        assert name in str(e.value)


def test_rehearsal_model_has_googlenets_layers_and_fits_the_synthetic_data():
    from bluff_ray.engine.models import load_model
    from bluff_ray.run.data import SyntheticSource

    reh = load_model("rehearsal")
    gn = load_model("googlenet", weights="random")
    assert reh.layers == gn.layers  # names, widths, branch and bottleneck sizes
    assert len(reh.class_ids) == 1000 and reh.class_ids == gn.class_ids
    again = load_model("rehearsal")
    for (k, v), (_, w) in zip(reh.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(v, w), k  # seeded: the same weights on every load and machine
    src = SyntheticSource(reh.input_shape, per_class=2)
    x = torch.cat([src.class_images(c)[0] for c in range(0, 1000, 37)])
    y = torch.arange(0, 1000, 37).repeat_interleave(2)
    with torch.no_grad():
        acc = (reh.model(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9
    with pytest.raises(ValueError, match="seed:<n>"):
        load_model("rehearsal", weights="/some/file.pth")


def test_the_engine_reads_no_urls_the_run_layer_does(digits, tmp_path):
    """engine.models.load_model refuses a URL (no I/O in the engine); run.models.load_model reads it
    through the store's opener and hands the engine a state dict; local files work in both."""
    buf = io.BytesIO()
    torch.save(digits.model.state_dict(), buf)
    with fsspec.open("memory://h2/digits.pt", "wb") as f:
        f.write(buf.getvalue())
    with pytest.raises(ValueError, match="run.models.load_model"):
        load_model("digits", weights="memory://h2/digits.pt")
    a = run_load_model("digits", weights="memory://h2/digits.pt")
    (tmp_path / "d.pt").write_bytes(buf.getvalue())
    b = load_model("digits", weights=str(tmp_path / "d.pt"))
    c = load_model("digits", weights=digits.model.state_dict())
    x, _ = digits_split("test")
    with torch.no_grad():
        ref = digits.model(x[:16])
        assert all(torch.equal(m.model(x[:16]), ref) for m in (a, b, c))
    assert a.metadata["weights"] == "memory://h2/digits.pt" and b.metadata["weights"] == str(tmp_path / "d.pt")
