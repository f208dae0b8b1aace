"""torchvision GoogLeNet (InceptionV1) as a ModelAdapter.

Input composition (why it is right for torchvision's weights): the adapter's ``model`` takes RGB
pixels in [0, 1], applies the ImageNet mean/std normalisation, and calls the torchvision net. With
``transform_input=True`` (what ``GoogLeNet_Weights.IMAGENET1K_V1`` uses) torchvision itself maps that
ImageNet-normalised input on to the (x - 0.5) / 0.5 scaling the ported Google weights were trained
with; with ``transform_input=False`` the net sees the ImageNet-normalised input directly (what a net
trained with torchvision's reference recipe expects). Either way the caller always feeds [0, 1]
pixels, so attack strengths are measured in [0, 1] pixel space.

Note: torchvision's "5x5" branch uses a 3x3 kernel (pytorch/vision#906); we keep the real kernel:
influence code reads kernel sizes from the modules, never from the branch name.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models import GoogLeNet, GoogLeNet_Weights
from torchvision.transforms import functional as TF

from bluff_ray.engine.models.base import LayerInfo, ModelAdapter
from bluff_ray.engine.models.weights import read_state_dict, state_dict_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: L2 strengths 0.05..0.50 in [0,1] pixel space (3x224x224 values).
GOOGLENET_STRENGTHS = tuple(round(0.05 * i, 2) for i in range(1, 11))

LAYER_NAMES = ("mixed3a", "mixed3b", "mixed4a", "mixed4b", "mixed4c", "mixed4d", "mixed4e", "mixed5a", "mixed5b")
_TV_BLOCKS = (
    "inception3a",
    "inception3b",
    "inception4a",
    "inception4b",
    "inception4c",
    "inception4d",
    "inception4e",
    "inception5a",
    "inception5b",
)
# The max-pool that forms each block's input from the previous block (None: same stage).
_TV_POOLS = (None, None, "maxpool3", None, None, None, None, "maxpool4", None)

INPUT_SPACE = (
    "RGB pixels in [0, 1] at 3x224x224 (resize shorter side to 256, centre crop 224); "
    "ImageNet mean/std normalisation is inside the model; eps is the norm of the perturbation "
    "over all 150,528 values in this [0, 1] space"
)

WEIGHT_OPTIONS = (
    "weights may be 'torchvision' (GoogLeNet_Weights.IMAGENET1K_V1 from the torchvision/torch hub "
    "cache at {cache}; no download is attempted), a local .pth state_dict file, or an fsspec URL "
    "to one (e.g. s3://bucket/googlenet.pth, file:///path/googlenet.pth, memory://googlenet.pth); "
    "'random' gives seeded random weights for benchmarks"
)


class Normalized(nn.Module):
    """[0,1] pixels -> (x - mean) / std -> ``net``; keeps attacks in pixel space."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _layer_info(name: str, block: Any) -> LayerInfo:
    """``block``: a torchvision Inception (typed Any: its branches are reached by attribute and index)."""

    def out_ch(unit: Any) -> int:
        return unit.conv.out_channels

    sizes = (out_ch(block.branch1), out_ch(block.branch2[1]), out_ch(block.branch3[1]), out_ch(block.branch4[1]))
    return LayerInfo(
        name=name,
        channels=sum(sizes),
        branch_sizes=sizes,
        bottleneck_sizes=(out_ch(block.branch2[0]), out_ch(block.branch3[0])),
    )


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in sorted order (= torchvision's class index order)."""
    text = resources.files("bluff_ray.engine.models").joinpath("imagenet_wnids.txt").read_text()
    wnids = text.split()
    if len(wnids) != 1000 or wnids != sorted(wnids):
        raise RuntimeError("bluff_ray/models/imagenet_wnids.txt is damaged: expected 1000 sorted wnids")
    return wnids


def load_imagenet_image(img: Image.Image) -> torch.Tensor:
    """PIL image -> float[3,224,224] in [0,1]: RGB, resize shorter side to 256, centre crop 224."""
    img = img.convert("RGB")
    img = TF.resize(img, 256, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    img = TF.center_crop(img, 224)
    return TF.to_tensor(img)


def googlenet_adapter(model: GoogLeNet, weights_source: str = "unknown") -> ModelAdapter:
    """Wrap any torchvision GoogLeNet (1000 ImageNet classes) as a ModelAdapter (eval mode, no aux)."""
    if not isinstance(model, GoogLeNet):
        raise TypeError(f"expected torchvision.models.GoogLeNet, got {type(model).__name__}")
    model.aux_logits = False  # inference: only the main head
    model.aux1 = None
    model.aux2 = None
    wrapped = Normalized(model, IMAGENET_MEAN, IMAGENET_STD).eval()
    blocks = [getattr(model, b) for b in _TV_BLOCKS]
    pools = [nn.Identity() if p is None else getattr(model, p) for p in _TV_POOLS]
    n_classes = model.fc.out_features
    if n_classes == 1000:
        names = list(GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"])
        ids = imagenet_wnids()
    else:
        names = [f"class {i}" for i in range(n_classes)]
        ids = [str(i) for i in range(n_classes)]
    return ModelAdapter(
        name="googlenet",
        model=wrapped,
        blocks=blocks,
        layers=[_layer_info(n, b) for n, b in zip(LAYER_NAMES, blocks)],
        input_pools=pools,
        class_names=names,
        class_ids=ids,
        input_shape=(3, 224, 224),
        input_space=INPUT_SPACE,
        load_image=load_imagenet_image,
        metadata={
            "weights": weights_source,
            "transform_input": bool(model.transform_input),
            "torchvision": torchvision.__version__,
            "default_strengths": GOOGLENET_STRENGTHS,
        },
    )


def _torchvision_cache_path() -> str:
    url = GoogLeNet_Weights.IMAGENET1K_V1.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def weights_help() -> str:
    """What ``weights`` may be (for error messages)."""
    return WEIGHT_OPTIONS.format(cache=_torchvision_cache_path())


def load_googlenet(
    weights: str | dict | None = "torchvision",
    transform_input: bool = True,
    weights_source: str | None = None,
) -> ModelAdapter:
    """GoogLeNet with real weights.

    ``weights``: ``"torchvision"`` (default; IMAGENET1K_V1 read from the torch hub cache only, since
    a cluster node may have no internet), a local state_dict file, or the state dict itself (a URL
    is fetched by ``bluff_ray.run.models.load_model``, which passes the state dict and the URL as
    ``weights_source``). Auxiliary-head keys (``aux1.*``, ``aux2.*``) are ignored.
    ``transform_input`` must match how the weights were trained: True for torchvision's ported
    IMAGENET1K_V1 weights (also when copied to a file/S3).
    """
    cache = _torchvision_cache_path()
    options = WEIGHT_OPTIONS.format(cache=cache)
    if weights == "random":  # benchmarks and rehearsals: no weights file anywhere
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = GoogLeNet(num_classes=1000, aux_logits=False, transform_input=transform_input, init_weights=True)
        return googlenet_adapter(net, weights_source="random (seed 0)")
    if weights is None or weights == "torchvision":
        if not os.path.isfile(cache):
            raise FileNotFoundError(f"GoogLeNet IMAGENET1K_V1 weights are not in the torchvision cache. {options}")
        state = read_state_dict(cache)
        source = f"torchvision:IMAGENET1K_V1 ({os.path.basename(cache)})"
    else:
        try:
            state = state_dict_of(weights)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}. {options}") from e
        source = weights_source or (weights if isinstance(weights, str) else "state dict")
    state = {k.removeprefix("net."): v for k, v in state.items() if k not in ("mean", "std")}
    state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    net = GoogLeNet(num_classes=1000, aux_logits=False, transform_input=transform_input, init_weights=False)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{source!r} is not a torchvision GoogLeNet state_dict: {e}") from e
    adapter = googlenet_adapter(net, weights_source=source)
    if weights in (None, "torchvision"):
        adapter.metadata["imagenet_top1"] = GoogLeNet_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    return adapter
