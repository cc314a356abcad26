"""Training machinery: config, state and steps, the stream and its runners, the loop."""

from edgefilter.training import (
    accounting,
    checkpoint,
    config,
    eif_runner,
    loop,
    metrics,
    multihost,
    parallel,
    steps,
    stream,
)

__all__ = [
    "accounting",
    "checkpoint",
    "config",
    "eif_runner",
    "loop",
    "metrics",
    "multihost",
    "parallel",
    "steps",
    "stream",
]
