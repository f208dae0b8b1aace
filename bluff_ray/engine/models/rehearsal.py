"""The rehearsal model: GoogLeNet's shape at a fraction of its cost, to rehearse a full-scale run.

Why it exists: the product's promise is every ordered pair of 1,000 ImageNet classes. Neither
ImageNet nor a GPU is needed to check that the pipeline, the storage layout, the reduce and the
viewer hold at that scale: what matters for file sizes, footers, node and edge counts and driver
memory is the number of classes and the channel widths of the explained layers, not the
resolution. This net has torchvision GoogLeNet's nine mixed blocks (``Inception`` modules with
the same branch widths, names mixed3a ... mixed5b, the same max-pools between stages) and 1,000
classes, on 3x8x8 inputs, so a forward pass costs ~10 MFLOP instead of ~1.5 GFLOP. Its weights
are seeded random (``seed``), deterministic on every machine; batch-norm statistics are set from
one forward pass over seeded random images so activations are neither dead nor exploding. The
classifier is then fitted to the synthetic data: class c's weight row is the (centred, normalised)
mixed5b feature of class c's synthetic pattern, so the model classifies ``--data synthetic``
images correctly (the run attacks only correctly classified images) and targeted attacks succeed
more often as the strength grows, as they do on a real model.

With ``--data synthetic`` (``data.SyntheticSource``) it needs no download at all:
``bluff run --model rehearsal --data synthetic --images-per-class 2 --attack-steps 1 ...``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.googlenet import BasicConv2d, Inception

from bluff_ray.engine.models.base import LayerInfo, ModelAdapter
from bluff_ray.engine.models.googlenet import LAYER_NAMES, imagenet_wnids

INPUT_SIDE = 8
N_CLASSES = 1000
# torchvision GoogLeNet's Inception arguments: (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj).
INCEPTION_ARGS = (
    (192, 64, 96, 128, 16, 32, 32),
    (256, 128, 128, 192, 32, 96, 64),
    (480, 192, 96, 208, 16, 48, 64),
    (512, 160, 112, 224, 24, 64, 64),
    (512, 128, 128, 256, 24, 64, 64),
    (512, 112, 144, 288, 32, 64, 64),
    (528, 256, 160, 320, 32, 128, 128),
    (832, 256, 160, 320, 32, 128, 128),
    (832, 384, 192, 384, 48, 128, 128),
)
#: GoogLeNet's ten L2 strengths (0.05..0.50): on this model and the synthetic data, 5 PGD steps
#: succeed on about 0 % of the images at 0.05 and 60-80 % from 0.15 up (a rehearsal needs some
#: successes, so that exploited neurons and patching results exist, not a realistic curve).
REHEARSAL_STRENGTHS = tuple(round(0.05 * i, 2) for i in range(1, 11))

INPUT_SPACE = (
    "RGB pixels in [0, 1] at 3x8x8 (the rehearsal model; synthetic images); eps is the L2 norm of "
    "the perturbation over the 192 values in this [0, 1] space"
)


class RehearsalNet(nn.Module):
    """stem -> mixed3a, 3b -> maxpool -> mixed4a..4e -> maxpool -> mixed5a, 5b -> GAP -> fc(1000)."""

    # set by name in __init__ (one per LAYER_NAMES entry)
    mixed3a: Inception
    mixed3b: Inception
    mixed5a: Inception
    mixed5b: Inception

    def __init__(self, num_classes: int = N_CLASSES):
        super().__init__()
        self.stem = BasicConv2d(3, 192, kernel_size=3, padding=1)
        self.pool2 = nn.MaxPool2d(2, 2)  # 8x8 -> 4x4: mixed3 at 4x4
        blocks = [Inception(*args) for args in INCEPTION_ARGS]
        for name, block in zip(LAYER_NAMES, blocks):
            setattr(self, name, block)
        self.maxpool3 = nn.MaxPool2d(2, 2)  # 4x4 -> 2x2: mixed4
        self.maxpool4 = nn.MaxPool2d(2, 2)  # 2x2 -> 1x1: mixed5
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.stem(x))
        x = self.mixed3b(self.mixed3a(x))
        x = self.maxpool3(x)
        for name in LAYER_NAMES[2:7]:
            x = getattr(self, name)(x)
        x = self.maxpool4(x)
        x = self.mixed5b(self.mixed5a(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def synthetic_pattern(class_id: int, input_shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """The smooth pattern [C,H,W] shared by every synthetic image of a class: a seeded 4x4 grid per
    channel, bilinearly enlarged (the rehearsal model's classifier is fitted to these)."""
    import torch.nn.functional as F

    c, h, w = input_shape
    g = torch.Generator().manual_seed(seed * 1_000_003 + int(class_id))
    return F.interpolate(torch.rand(1, c, 4, 4, generator=g), size=(h, w), mode="bilinear", align_corners=False)[0]


def _calibrate(net: RehearsalNet, seed: int) -> None:
    """Set every BatchNorm's running statistics from one forward pass over seeded random images
    (train-mode BN with momentum None = the plain batch statistics), then freeze them."""
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(64, 3, INPUT_SIDE, INPUT_SIDE, generator=gen)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()


#: Scale of the prototype classifier's logits (cosine similarities); sets how hard an attack is.
LOGIT_SCALE = 10.0


@torch.no_grad()
def _fit_classifier(net: RehearsalNet) -> None:
    """fc row c = LOGIT_SCALE x the centred, normalised mixed5b feature of class c's synthetic pattern."""

    patterns = torch.stack([synthetic_pattern(c, (3, INPUT_SIDE, INPUT_SIDE)) for c in range(N_CLASSES)])
    feats: dict[str, torch.Tensor] = {}
    hook = net.mixed5b.register_forward_hook(lambda _m, _i, out: feats.__setitem__("f", out))
    try:
        net(patterns)
    finally:
        hook.remove()
    f = torch.flatten(F.adaptive_avg_pool2d(feats["f"], 1), 1)
    mu = f.mean(dim=0)
    proto = F.normalize(f - mu, dim=1)
    net.fc.weight.copy_(LOGIT_SCALE * proto)
    net.fc.bias.copy_(-LOGIT_SCALE * proto @ mu)


def rehearsal_net(seed: int = 0) -> RehearsalNet:
    """The seeded random rehearsal net with its fitted classifier (the caller's global RNG is left
    untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = RehearsalNet()
    _calibrate(net, seed)
    _fit_classifier(net)
    return net


def load_rehearsal_image(img) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    img = img.convert("RGB").resize((INPUT_SIDE, INPUT_SIDE))
    return TF.to_tensor(img)


def rehearsal_adapter(net: RehearsalNet | None = None, seed: int = 0) -> ModelAdapter:
    """Wrap the rehearsal net (built from ``seed`` unless given) as a ModelAdapter."""
    net = (net or rehearsal_net(seed)).eval()
    blocks = [getattr(net, n) for n in LAYER_NAMES]
    layers = []
    for name, args in zip(LAYER_NAMES, INCEPTION_ARGS):
        _, c1, r3, c3, r5, c5, cp = args
        layers.append(
            LayerInfo(name=name, channels=c1 + c3 + c5 + cp, branch_sizes=(c1, c3, c5, cp), bottleneck_sizes=(r3, r5))
        )
    pools = [
        nn.Identity() if p is None else getattr(net, p)
        for p in (None, None, "maxpool3", None, None, None, None, "maxpool4", None)
    ]
    try:
        ids = imagenet_wnids()
    except RuntimeError:
        ids = [str(i) for i in range(N_CLASSES)]
    return ModelAdapter(
        name="rehearsal",
        model=net,
        blocks=blocks,
        layers=layers,
        input_pools=pools,
        class_names=[f"rehearsal {i:03d} ({w})" for i, w in enumerate(ids)],
        class_ids=ids,
        input_shape=(3, INPUT_SIDE, INPUT_SIDE),
        input_space=INPUT_SPACE,
        load_image=load_rehearsal_image,
        metadata={"default_strengths": REHEARSAL_STRENGTHS, "weights": f"seeded random (seed {seed})", "seed": seed},
    )
