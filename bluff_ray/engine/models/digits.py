"""A small Inception-style net for scikit-learn's bundled 8x8 digits: the offline demo model.

Why it exists: it lets the whole pipeline (attack, importance, influence, Ray, Parquet, viewer) run
end to end on a laptop with no downloads, with blocks that have exactly GoogLeNet's four-branch
layout so no code path is digits-specific.

Architecture (input 1x8x8 grey, sklearn pixel value / 16 in [0, 1], 16 = full ink):

    stem     BasicConv2d 3x3, 1 -> 32                                    8x8
    mixed3a  1x1: 8 | 1x1 12 -> 3x3: 16 | 1x1 4 -> 5x5: 8  | pool -> 1x1: 8    = 40 ch, 8x8
    mixed3b  1x1: 12| 1x1 16 -> 3x3: 20 | 1x1 6 -> 5x5: 12 | pool -> 1x1: 12   = 56 ch, 8x8
    MaxPool2d(2)                                                          4x4
    mixed4a  1x1: 16| 1x1 16 -> 3x3: 24 | 1x1 8 -> 5x5: 12 | pool -> 1x1: 12   = 64 ch, 4x4
    mixed4b  1x1: 16| 1x1 16 -> 3x3: 24 | 1x1 8 -> 5x5: 12 | pool -> 1x1: 12   = 64 ch, 4x4
    global average pool -> Linear(64, 10)

Every unit is torchvision's ``BasicConv2d`` (conv without bias -> BN -> ReLU), so influence code
treats it exactly like GoogLeNet. 40-64 channels per layer keeps top-k=10 roles selective.

Attack strengths (``DIGITS_STRENGTHS``): eps is the L2 norm of the perturbation over the 64 pixels
in [0, 1]. Measured with targeted PGD-L2 (50 steps, step eps/5, random start) toward a random wrong
class on the first 200 test images (``bench/pgd.py --curve 200``), success is:

    eps      0.1   0.2   0.3   0.4   0.5   0.6   0.7   0.8   0.9   1.0
    success  0.01  0.02  0.06  0.11  0.28  0.45  0.70  0.88  0.96  0.99

GoogLeNet's 0.05..0.50 (chosen for 150,528-value ImageNet inputs) would stop at ~28% success here:
a digit only changes class when whole strokes change, so the useful range is larger. 0.1..1.0 in
10 even steps spans "the attack almost never works" to "it almost always works", which is what
the strength slider should show. tests/test_attack.py checks both ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models.googlenet import BasicConv2d
from torchvision.transforms import functional as TF

from bluff_ray.engine.models.base import LayerInfo, ModelAdapter
from bluff_ray.engine.models.weights import state_dict_of
from bluff_ray.localfile import atomic_write

log = logging.getLogger("bluff_ray.engine.models")

#: 10 evenly spaced L2 strengths in [0,1] pixel space on 64-d inputs (see module docstring).
DIGITS_STRENGTHS = tuple(round(0.1 * i, 2) for i in range(1, 11))

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CLASS_IDS = [str(i) for i in range(10)]

INPUT_SPACE = (
    "grey pixels in [0, 1] at 1x8x8 (scikit-learn digits value / 16; 1 = full ink); "
    "eps is the norm of the perturbation over the 64 values in this [0, 1] space"
)

# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per block, like torchvision's Inception.
_BLOCKS = {
    "mixed3a": (8, 12, 16, 4, 8, 8),
    "mixed3b": (12, 16, 20, 6, 12, 12),
    "mixed4a": (16, 16, 24, 8, 12, 12),
    "mixed4b": (16, 16, 24, 8, 12, 12),
}
STEM_CHANNELS = 32


class MaxPool2dCL(nn.MaxPool2d):
    """``nn.MaxPool2d`` computed in channels_last memory: bitwise the same values, ~3x faster on
    CPUs for these small NCHW maps (the NCHW kernel is pathologically slow). Still a MaxPool2d,
    so code that reads kernel_size/stride/padding keeps working; the output keeps the input's
    memory format (plain contiguous for NCHW input, channels_last in the attack model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        cl = torch.channels_last
        out = super().forward(x.contiguous(memory_format=cl))
        return out if x.is_contiguous(memory_format=cl) and not x.is_contiguous() else out.contiguous()


class Mixed(nn.Module):
    """Four-branch Inception block (same attribute layout as torchvision's ``Inception``)."""

    def __init__(self, cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, cp: int):
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, r3, kernel_size=1), BasicConv2d(r3, c3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, r5, kernel_size=1), BasicConv2d(r5, c5, kernel_size=5, padding=2))
        self.branch4 = nn.Sequential(MaxPool2dCL(3, stride=1, padding=1), BasicConv2d(cin, cp, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class DigitsNet(nn.Module):
    """stem -> mixed3a -> mixed3b -> maxpool -> mixed4a -> mixed4b -> GAP -> fc."""

    # set by name in __init__ (one per _BLOCKS entry)
    mixed3a: Mixed
    mixed3b: Mixed
    mixed4a: Mixed
    mixed4b: Mixed

    @classmethod
    def empty(cls) -> DigitsNet:
        """A net about to receive a state_dict: built without touching the caller's global RNG."""
        with torch.random.fork_rng(devices=[]):
            return cls()

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = BasicConv2d(1, STEM_CHANNELS, kernel_size=3, padding=1)
        cin = STEM_CHANNELS
        for name, spec in _BLOCKS.items():
            setattr(self, name, Mixed(cin, *spec))
            cin = spec[0] + spec[2] + spec[4] + spec[5]
        self.pool3 = MaxPool2dCL(2)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mixed3b(self.mixed3a(self.stem(x)))
        x = self.mixed4b(self.mixed4a(self.pool3(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def digits_split(split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stratified 70/30 split of sklearn's digits.

    Returns (float32[N,1,8,8] in [0,1], int64[N]); ``split`` is "train" or "test".
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    x, y = (xtr, ytr) if split == "train" else (xte, yte)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def load_digit_image(img: Image.Image) -> torch.Tensor:
    """PIL image -> float[1,8,8] in [0,1] (grey, resized to 8x8; bright = ink, as in the arrays)."""
    img = img.convert("L")
    if img.size != (8, 8):
        img = img.resize((8, 8), Image.Resampling.BOX)
    return TF.to_tensor(img)


@dataclass(frozen=True)
class DigitsTrainConfig:
    """Hyperparameters of the demo net; all of them (and the seed) name the cached checkpoint."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 1e-4
    shift: int = 1  # random translation (pixels) as augmentation
    split_seed: int = 0

    def key(self, seed: int) -> str:
        blob = json.dumps({"v": 2, "seed": seed, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("BLUFF_CACHE") or Path.home() / ".cache" / "bluff_ray")


def _shift(x: torch.Tensor, shift: int, g: torch.Generator) -> torch.Tensor:
    """Randomly translate each image by up to ``shift`` pixels (zero fill)."""
    if shift == 0:
        return x
    n = x.shape[0]
    padded = F.pad(x, (shift,) * 4)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=g)
    idx = torch.arange(8)
    rows = (dy[:, None] + idx[None]).view(n, 1, 8, 1).expand(n, 1, 8, 8 + 2 * shift)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + idx[None]).view(n, 1, 1, 8).expand(n, 1, 8, 8)
    return x.gather(3, cols)


def _fit(cfg: DigitsTrainConfig, seed: int) -> dict[str, torch.Tensor]:
    """Train on the CPU with one thread so that the same seed gives bitwise-identical weights."""
    xtr, ytr = digits_split("train", cfg.split_seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
            torch.manual_seed(seed)
            net = DigitsNet()
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * -(-len(xtr) // cfg.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
        net.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr), cfg.batch_size):
                b = perm[i : i + cfg.batch_size]
                loss = F.cross_entropy(net(_shift(xtr[b], cfg.shift, g)), ytr[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}


@torch.no_grad()
def eval_accuracy(net: nn.Module, split_seed: int = 0) -> float:
    x, y = digits_split("test", split_seed)
    dev = next(net.parameters()).device
    return (net(x.to(dev)).argmax(1).cpu() == y).float().mean().item()


def digits_adapter(net: DigitsNet, metadata: dict | None = None) -> ModelAdapter:
    """Wrap a DigitsNet (eval mode) as a ModelAdapter."""
    net.eval()
    names = list(_BLOCKS)
    blocks = [getattr(net, n) for n in names]
    layers = [
        LayerInfo(name=n, channels=c1 + c3 + c5 + cp, branch_sizes=(c1, c3, c5, cp), bottleneck_sizes=(r3, r5))
        for n, (c1, r3, c3, r5, c5, cp) in _BLOCKS.items()
    ]
    pools = [nn.Identity(), nn.Identity(), net.pool3, nn.Identity()]
    return ModelAdapter(
        name="digits",
        model=net,
        blocks=blocks,
        layers=layers,
        input_pools=pools,
        class_names=list(CLASS_NAMES),
        class_ids=list(CLASS_IDS),
        input_shape=(1, 8, 8),
        input_space=INPUT_SPACE,
        load_image=load_digit_image,
        metadata={"default_strengths": DIGITS_STRENGTHS, **(metadata or {})},
    )


def train_digits(
    seed: int = 0, cache_dir: str | os.PathLike | None = None, config: DigitsTrainConfig | None = None
) -> ModelAdapter:
    """The demo model: read ``<cache_dir>/digits-<key>.pt`` or train it (deterministically) and cache it.

    ``key`` hashes the hyperparameters and the seed, so a changed recipe never reuses a stale file.
    Concurrent callers (Ray actors) may both train; each writes atomically and the results are
    identical, so any reader sees one whole, correct file.
    """
    cfg = config or DigitsTrainConfig()
    key = cfg.key(seed)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"digits-{key}.pt"
    if path.is_file():
        data = path.read_bytes()
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        net = DigitsNet.empty()
        net.load_state_dict(ckpt["state_dict"])
        accuracy, trained = float(ckpt["test_accuracy"]), False
    else:
        log.info("training the digits model (once; cached as %s)", path)
        t0 = time.perf_counter()
        net = DigitsNet.empty()
        net.load_state_dict(_fit(cfg, seed))
        accuracy, trained = eval_accuracy(net.eval(), cfg.split_seed), True
        buf = io.BytesIO()
        ckpt = {
            "state_dict": net.state_dict(),
            "config": dataclasses.asdict(cfg),
            "seed": seed,
            "test_accuracy": accuracy,
        }
        torch.save(ckpt, buf)
        data = buf.getvalue()
        atomic_write(path, data)
        log.info("digits model trained in %.0f s: test accuracy %.3f", time.perf_counter() - t0, accuracy)
    net.eval()
    meta = {
        "weights": str(path),
        "checkpoint_key": key,
        "checkpoint_sha256": hashlib.sha256(data).hexdigest(),
        "trained_now": trained,
        "seed": seed,
        "train_config": dataclasses.asdict(cfg),
        "test_accuracy": accuracy,
    }
    return digits_adapter(net, meta)


def load_digits_model(
    weights: str | dict | None = None, cache_dir: str | os.PathLike | None = None, weights_source: str | None = None
) -> ModelAdapter:
    """``weights=None``: the cached/trained default; otherwise a local state_dict file or the state dict
    itself (a URL is fetched by ``bluff_ray.run.models.load_model``, named by ``weights_source``)."""
    if weights is None:
        return train_digits(cache_dir=cache_dir)
    source = weights_source or (weights if isinstance(weights, str) else "state dict")
    net = DigitsNet.empty()
    try:
        net.load_state_dict(state_dict_of(weights))
    except RuntimeError as e:
        raise ValueError(f"{source!r} is not a DigitsNet state_dict: {e}") from e
    net.eval()
    return digits_adapter(net, {"weights": source, "test_accuracy": eval_accuracy(net)})
