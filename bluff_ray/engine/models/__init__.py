"""Model adapters: every model bluff_ray explains, behind one ``ModelAdapter`` interface."""

from __future__ import annotations

import os

from bluff_ray.engine.models.base import BRANCHES, LayerInfo, ModelAdapter
from bluff_ray.engine.models.weights import is_url

MODEL_NAMES = ("digits", "googlenet", "rehearsal")


def load_model(
    name: str,
    weights: str | dict | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    weights_source: str | None = None,
) -> ModelAdapter:
    """Load a model by name, in eval mode, on ``device``.

    ``weights`` is a name, a local file or a state dict; a URL (``s3://...``) is fetched by the run
    layer: ``bluff_ray.run.models.load_model`` takes the same arguments plus ``storage_options``,
    reads it and passes the state dict here, with the URL as ``weights_source``.

    - ``"digits"``: ``weights=None`` reads (or trains and caches) the demo net in ``cache_dir``
      (default ``$BLUFF_CACHE`` or ``~/.cache/bluff_ray``); else a state_dict file or dict.
    - ``"googlenet"``: ``weights`` is ``"torchvision"`` (default; the torch hub cache), a local
      state_dict file or dict, or ``"random"`` (seeded random weights: benchmarks and rehearsals only).
    - ``"rehearsal"``: GoogLeNet's nine mixed layers and 1,000 classes on 3x8x8 inputs with seeded
      random weights (``models/rehearsal.py``); ``weights`` may be ``"seed:<n>"``.
    """
    if isinstance(weights, str) and is_url(weights):
        raise ValueError(
            f"weights {weights!r} is a URL: load it with bluff_ray.run.models.load_model, which reads "
            "it with the storage timeouts and retries"
        )
    if name == "digits":
        from bluff_ray.engine.models.digits import load_digits_model

        adapter = load_digits_model(weights, cache_dir=cache_dir, weights_source=weights_source)
    elif name == "googlenet":
        from bluff_ray.engine.models.googlenet import load_googlenet

        adapter = load_googlenet(weights or "torchvision", weights_source=weights_source)
    elif name == "rehearsal":
        from bluff_ray.engine.models.rehearsal import rehearsal_adapter

        adapter = rehearsal_adapter(seed=_seed_of(weights))
    else:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return adapter.to(device)


__all__ = ["BRANCHES", "LayerInfo", "ModelAdapter", "MODEL_NAMES", "load_model"]


def _seed_of(weights: object) -> int:
    if weights in (None, "random"):
        return 0
    if isinstance(weights, str) and weights.startswith("seed:") and weights[5:].isdigit():
        return int(weights[5:])
    raise ValueError(
        f"the rehearsal model has seeded random weights: weights must be unset or 'seed:<n>', got {weights!r}"
    )
