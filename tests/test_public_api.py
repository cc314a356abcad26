"""The public API: ``edgefilter.__all__`` and the ``__all__`` of the modules it names."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import edgefilter as ef

# Entry points the package docstring names as qualified (``ef.models.create``, ...).
QUALIFIED = (
    "models.create",
    "models.MODEL_NAMES",
    "emp.conv_general_dilated",
    "emp.pruning",
    "quant.conv_general_dilated",
    "instance_filter.init",
    "instance_filter.predict",
    "instance_filter.update",
    "instance_filter.end_window",
    "eif.filter_loss",
    "flops.per_instance",
    "data.load",
)


def _exports(module: types.ModuleType) -> tuple[str, ...]:
    return tuple(getattr(module, "__all__", ()))


def _public_modules() -> list[types.ModuleType]:
    """``edgefilter`` and every module reachable from it through ``__all__``."""
    found, todo = [], [ef]
    while todo:
        module = todo.pop()
        if module in found:
            continue
        found.append(module)
        exported = (getattr(module, name) for name in _exports(module))
        todo += [value for value in exported if isinstance(value, types.ModuleType)]
    return found


def test_every_exported_name_resolves():
    modules = _public_modules()
    # These list their names; the training machinery's modules may (their names resolve).
    listed = (ef, ef.method, ef.models, ef.data, *(getattr(ef, m) for m in ef.method.__all__))
    assert set(listed) <= set(modules)
    for module in modules:
        assert _exports(module) or module not in listed, module.__name__
        for name in _exports(module):
            assert hasattr(module, name), f"{module.__name__}.{name}"
        assert len(set(_exports(module))) == len(_exports(module)), module.__name__
    for dotted in QUALIFIED:
        module, name = dotted.split(".")
        assert name in getattr(ef, module).__all__, dotted


def test_top_level_names_are_the_method_modules_objects():
    assert ef.TopK is ef.emp.TopK and ef.Threshold is ef.emp.Threshold
    assert ef.FilterConfig is ef.instance_filter.FilterConfig
    assert ef.train_and_evaluate is ef.training.loop.train_and_evaluate
    assert ef.TrainConfig is ef.training.config.TrainConfig


def test_method_modules_import_under_their_design_names():
    import edgefilter.emp
    from edgefilter.emp import TopK
    from edgefilter.flops import per_instance
    from edgefilter.instance_filter import FilterConfig

    assert edgefilter.emp is ef.method.emp
    assert (TopK, per_instance, FilterConfig) == (ef.TopK, ef.flops.per_instance, ef.FilterConfig)


def test_no_backend_work_around_in_the_public_api():
    assert "backends" not in ef.__all__
    for module in _public_modules():
        assert not module.__name__.startswith("edgefilter.backends"), module.__name__
        for name in _exports(module):
            owner = getattr(getattr(module, name), "__module__", None) or ""
            assert not owner.startswith("edgefilter.backends"), f"{module.__name__}.{name}"


def test_reporting_is_imported_when_first_used_and_training_needs_neither_plots_nor_scipy():
    code = (
        "import sys, edgefilter, edgefilter.training.loop\n"
        "heavy = ('edgefilter.reporting', 'matplotlib', 'scipy')\n"
        "print(sorted(h for h in heavy if h in sys.modules))\n"
        "edgefilter.reporting.figures\n"
        "print(sorted(h for h in heavy if h in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "['edgefilter.reporting', 'matplotlib', 'scipy']"]
    assert "reporting" in dir(ef)
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        ef.nonesuch  # noqa: B018
