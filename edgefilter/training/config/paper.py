"""The paper's training settings (PAPER.md, "Training settings"), by dataset family:
the values :func:`edgefilter.training.config.resolve` fills in for settings left ``None``."""

from __future__ import annotations

__all__ = ["FILTER_MODELS", "PAPER", "dataset_family"]


def dataset_family(dataset: str) -> str:
    """``"mnist"``, ``"cifar"`` or ``"imagenet"``: which of the paper's settings applies."""
    if dataset.startswith("idx:") or dataset in ("mnist", "fashion_mnist"):
        return "mnist"
    if dataset.startswith("cifar"):
        return "cifar"
    return "imagenet"


PAPER = {
    # family: (lr, momentum, weight decay, batch, iterations or epochs, lr boundaries)
    "mnist": dict(
        learning_rate=0.01,
        momentum=0.5,
        weight_decay=0.0,
        batch_size=64,
        epochs=20.0,
        lr_boundaries=(),
    ),
    "cifar": dict(
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=128,
        steps=64_000,
        lr_boundaries=(0.5, 0.75),
    ),
    "imagenet": dict(
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=256,
        steps=450_000,
        lr_boundaries=(1 / 3, 2 / 3),
    ),
}
FILTER_MODELS = {"mnist": "lenet_slim", "cifar": "resnet8", "imagenet": "resnet10"}
