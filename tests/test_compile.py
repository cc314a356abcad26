"""Tests of the XLA:CPU compile options, and that a step compiled with them uses them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from edgefilter import backends
from edgefilter.backends.xla_cpu import compile as compile_lib
from edgefilter.backends.xla_cpu import layers
from tests.conftest import compile_as_shipped

DN = ("NHWC", "HWIO", "NHWC")
pytestmark = pytest.mark.usefixtures("shipped_optimization")  # What a user's run compiles.


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    """Test data from NumPy: eager jax.random compiles threefry for every new shape."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN)


def test_cpu_gets_the_ynn_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert compile_lib.compiler_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}


def test_other_backends_get_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert compile_lib.compiler_options("gpu") == {}
    assert compile_lib.compiler_options("tpu") == {}


def test_a_users_xla_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    assert compile_lib.compiler_options("cpu") == {}


def test_options_are_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    compile_lib.compiler_options("cpu")["xla_cpu_experimental_ynn_fusion_type"] = "x"
    assert compile_lib.CPU_OPTIONS["xla_cpu_experimental_ynn_fusion_type"] == ""


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")
def test_compiled_conv_has_no_ynn_fusion_and_same_values() -> None:
    # LeNet's conv2 shape, which XLA:CPU would otherwise emit as a YNNPACK fusion.
    x, w = _normal(0, (64, 12, 12, 20)), _normal(1, (5, 5, 20, 50))
    ours = backends.jit(_conv, xla_cpu=True)
    assert "__ynn_fusion" not in compile_as_shipped(ours, x, w).as_text()
    np.testing.assert_allclose(ours(x, w), jax.jit(_conv)(x, w), rtol=1e-4, atol=1e-3)


def test_jit_passes_its_arguments_through() -> None:
    double = backends.jit(lambda x, n: x * n, xla_cpu=True, static_argnums=1, donate_argnums=0)
    assert double(jnp.ones(3), 2).tolist() == [2.0, 2.0, 2.0]
    explicit = backends.jit(
        lambda x: x + 1, xla_cpu=True, compiler_options={"xla_cpu_enable_fast_math": False}
    )
    assert explicit(jnp.zeros(2)).tolist() == [1.0, 1.0]


def test_fusion_emitters_off_adds_its_option_on_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert compile_lib.compiler_options("cpu", fusion_emitters=False) == {
        "xla_cpu_experimental_ynn_fusion_type": "",
        "xla_cpu_use_fusion_emitters": False,
    }
    assert compile_lib.compiler_options("gpu", fusion_emitters=False) == {}


def test_xla_flags_win_option_by_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true")
    assert compile_lib.compiler_options("cpu", fusion_emitters=False) == {
        "xla_cpu_experimental_ynn_fusion_type": ""
    }


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")
def test_without_fusion_emitters_the_same_values(
    monkeypatch: pytest.MonkeyPatch, shipped_optimization: dict
) -> None:
    # The filter's first layer: a tap-sum conv, ReLU and 2x2 max pooling, one fusion.
    def block(x: jax.Array, w: jax.Array) -> jax.Array:
        y = layers.small_kernel_conv(x, w, (1, 1), "VALID", dimension_numbers=DN)
        return layers.max_pool_2x2(jax.nn.relu(y))

    x, w = _normal(0, (8, 28, 28, 1)), _normal(1, (3, 3, 1, 6))
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # The suite's would leave the option out.
    legacy = backends.jit(block, xla_cpu=True, fusion_emitters=False)
    emitters = backends.jit(block, xla_cpu=True, compiler_options=shipped_optimization)
    # XLA accepts the option (an unknown one fails to compile) and computes the same.
    np.testing.assert_allclose(legacy(x, w), emitters(x, w), rtol=1e-6)


def test_an_option_this_xla_does_not_know_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert not compile_lib.cpu_accepts("xla_cpu_no_such_option", True)
    assert compile_lib.cpu_accepts(compile_lib.FUSION_EMITTERS_OPTION, False)
    monkeypatch.setitem(compile_lib.CPU_OPTIONS, "xla_cpu_no_such_option", True)
    assert "xla_cpu_no_such_option" not in compile_lib.compiler_options("cpu")
    assert backends.jit(lambda x: x * 2, xla_cpu=True)(jnp.ones(2)).tolist() == [2.0, 2.0]
