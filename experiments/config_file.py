r"""``--config=PATH.py:VARIANT[,shrink]``: a run's settings from a plain-Python config file.

A config file is a Python module with ``get_config(variant) -> TrainConfig`` that raises
``ValueError`` for a variant it does not know (big_vision's convention; the paper's
rows are ``experiments/configs/<row>.py``, listed in ``experiments.configs.ROWS``).
After the colon come the variant and, optionally, ``shrink``, comma-separated:

  python -m experiments.train --workdir=runs/lenet_mnist/eif_emp_79 \
      --config=experiments/configs/lenet_mnist.py:eif_emp_79
  python -m experiments.train --workdir=/tmp/smoke \
      --config=experiments/configs/lenet_mnist.py:eif_emp_79,shrink

``shrink`` runs the same config tiny, on random data (:mod:`experiments.shrink`). Flags
given beside ``--config`` override its values (``--r_set=0.5``), after the shrink.

:func:`load` raises ``ValueError`` naming the ``--config`` value and what is allowed: a
file that does not exist or is not a Python file, one that fails to load or has no
``get_config``, an unknown or missing variant, a config that is not a ``TrainConfig``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import NamedTuple

from edgefilter.training import config as config_lib
from experiments import configs

__all__ = ["SHRINK", "Loaded", "load"]

SHRINK = "shrink"
"""The word after the variant that makes a run tiny (``:eif_emp_79,shrink``)."""


class Loaded(NamedTuple):
    """A loaded ``--config``: its run's settings and whether ``shrink`` was asked for."""

    config: config_lib.TrainConfig
    shrink: bool


def load(spec: str) -> Loaded:
    """The config ``spec`` (``PATH.py:VARIANT[,shrink]``) names; ValueError if it cannot be had.

    The config is returned as the file gives it: not shrunk (see :mod:`experiments.shrink`)
    and not resolved (``None`` fields stand for the paper's defaults).
    """
    path, _, arg = spec.rpartition(":") if ":" in spec else (spec, "", "")
    words = [word for word in arg.split(",") if word]
    variants = [word for word in words if word != SHRINK]
    if not os.path.isfile(path):
        rows = ", ".join(f"{configs.FOLDER}/{row}.py" for row in configs.ROWS)
        raise _invalid(spec, f"there is no file {path!r}; the paper's rows are {rows}")
    if not path.endswith(".py"):
        raise _invalid(spec, f"{path!r} is not a Python file (PATH.py:VARIANT)")
    if len(variants) > 1:
        raise _invalid(spec, f"one variant after ':', optionally with ',{SHRINK}'; got {arg!r}")
    get_config = _get_config(spec, path)
    try:
        config = get_config(variants[0] if variants else None)
    except ValueError as e:
        raise _invalid(spec, f"{e} (optionally with ',{SHRINK}')") from None
    if not isinstance(config, config_lib.TrainConfig):
        raise _invalid(spec, f"get_config returned {type(config).__name__}, not a TrainConfig")
    return Loaded(config, SHRINK in words)


def _invalid(spec: str, reason: str) -> ValueError:
    return ValueError(f"--config={spec!r} is invalid: {reason}")


def _get_config(spec: str, path: str) -> Callable[[str | None], object]:
    """The file's ``get_config``, the file executed as a module of its own."""
    name = "_edgefilter_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # The file is the user's input: any failure is bad input.
        raise _invalid(spec, f"loading it fails ({type(e).__name__}: {e})") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise _invalid(spec, "it has no get_config(variant) function")
    return get_config
