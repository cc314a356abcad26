"""Tests for edgefilter.flops: hand-worked MAC counts and a cross-check against XLA.

Conventions under test (PAPER.md "Computation accounting", THOP): conv MACs = output
elements x kh x kw x c_in / groups, dense MACs = in x out, weight gradient (Eq. 12) =
forward, error propagation (Eq. 8) = forward except 0 for the first layer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
import pytest

from edgefilter import models
from edgefilter.method import emp, flops
from tests.conftest import compile_as_shipped, numpy_variables, xla_flops

CPU = jax.devices("cpu")[0]
NHWC = ("NHWC", "HWIO", "NHWC")


def _input_shape(name: str) -> tuple[int, int, int]:
    if name.startswith("lenet"):
        return (28, 28, 1)
    if name in ("resnet10", "resnet18"):
        return (224, 224, 3)
    return (32, 32, 3)


# --- Hand-worked counts ----------------------------------------------------------------


def test_lenet_by_hand():
    # 28x28x1 -> conv 5x5 (VALID) 20 -> 24x24x20 -> pool -> 12x12x20
    #         -> conv 5x5 (VALID) 50 -> 8x8x50   -> pool -> 4x4x50 = 800 -> FC 500 -> FC 10.
    conv1 = 24 * 24 * 20 * (5 * 5 * 1)  # 288,000
    conv2 = 8 * 8 * 50 * (5 * 5 * 20)  # 1,600,000
    fc1 = 800 * 500  # 400,000
    fc2 = 500 * 10  # 5,000
    assert (conv1, conv2, fc1, fc2) == (288_000, 1_600_000, 400_000, 5_000)
    forward = conv1 + conv2 + fc1 + fc2
    assert forward == 2_293_000

    layers = flops.per_layer("lenet", (28, 28, 1), 10)
    assert [(layer.name, layer.kind, layer.forward) for layer in layers] == [
        ("Conv_0", "conv", conv1),
        ("Conv_1", "conv", conv2),
        ("Dense_0", "dense", fc1),
        ("Dense_1", "dense", fc2),
    ]
    # The first layer reads the data: its input error (Eq. 8) is not needed.
    assert [layer.error_propagation for layer in layers] == [0, conv2, fc1, fc2]
    assert [layer.weight_gradient for layer in layers] == [conv1, conv2, fc1, fc2]
    assert [layer.output_channels for layer in layers] == [20, 50, 500, 10]
    assert [layer.output_shape for layer in layers] == [(24, 24, 20), (8, 8, 50), (500,), (10,)]
    assert [layer.kernel_shape for layer in layers] == [
        (5, 5, 1, 20),
        (5, 5, 20, 50),
        (800, 500),
        (500, 10),
    ]
    # No padding anywhere: XLA's count (taps on real input) equals THOP's.
    assert all(layer.unpadded_forward == layer.forward for layer in layers)

    assert flops.per_instance("lenet", (28, 28, 1), 10) == {
        "forward": 2_293_000,
        "error_propagation": 2_293_000 - conv1,  # 2,005,000
        "weight_gradient": 2_293_000,
        "train": 2_293_000 + 2_005_000 + 2_293_000,  # 6,591,000
    }


def test_resnet8_by_hand():
    stem = 32 * 32 * 16 * (3 * 3 * 3)  # 442,368
    stage1 = 2 * 32 * 32 * 16 * (3 * 3 * 16)  # two 16->16 convs at 32x32: 4,718,592
    stage2 = 16 * 16 * 32 * (3 * 3 * 16) + 16 * 16 * 32 * (3 * 3 * 32)  # stride 2, then 32->32
    stage3 = 8 * 8 * 64 * (3 * 3 * 32) + 8 * 8 * 64 * (3 * 3 * 64)  # stride 2, then 64->64
    fc = 64 * 10  # global average pool -> FC; option-A shortcuts have no conv.
    forward = stem + stage1 + stage2 + stage3 + fc
    assert forward == 12_239_488

    layers = flops.per_layer("resnet8", (32, 32, 3), 10)
    assert [layer.kind for layer in layers] == ["conv"] * 7 + ["dense"]
    assert [layer.forward for layer in layers] == [
        stem,
        stage1 // 2,
        stage1 // 2,
        16 * 16 * 32 * 144,
        16 * 16 * 32 * 288,
        8 * 8 * 64 * 288,
        8 * 8 * 64 * 576,
        fc,
    ]
    assert [layer.output_channels for layer in layers] == [16, 16, 16, 32, 32, 64, 64, 10]
    assert flops.per_instance("resnet8", (32, 32, 3), 10) == {
        "forward": forward,
        "error_propagation": forward - stem,
        "weight_gradient": forward,
        "train": 3 * forward - stem,
    }

    # Taps that read real input (not the zero padding), per spatial axis, for 3x3 "SAME":
    # stride 1 on a side of s: 3s - 2 (one tap lost at each border); stride 2 from 2s to s
    # pads (0, 1) only: 3s - 1. Times c_in * c_out per (output, tap) pair.
    unpadded = [
        94**2 * 3 * 16,  # stem, 32 -> 32: 3*32 - 2 = 94
        94**2 * 16 * 16,
        94**2 * 16 * 16,
        47**2 * 16 * 32,  # 32 -> 16, stride 2: 3*16 - 1 = 47
        46**2 * 32 * 32,  # 16 -> 16: 3*16 - 2 = 46
        23**2 * 32 * 64,  # 16 -> 8, stride 2: 3*8 - 1 = 23
        22**2 * 64 * 64,  # 8 -> 8: 3*8 - 2 = 22
        fc,
    ]
    assert [layer.unpadded_forward for layer in layers] == unpadded
    assert sum(unpadded) == 11_312_448  # 92.4% of THOP's 12,239,488


@pytest.mark.parametrize(
    "name, input_shape, num_classes, options, expected",
    [
        # torchvision ResNet-18, THOP/ptflops: 1.82 GMACs; CIFAR ResNet-20 / -110 (He et al.
        # 2016, option A): 41M / 253M; VGG-16 on 224x224 (original head): 15.47 GMACs.
        ("resnet18", (224, 224, 3), 1000, {}, 1_814_073_344),
        ("resnet20", (32, 32, 3), 10, {}, 40_551_040),
        ("resnet110", (32, 32, 3), 10, {}, 252_887_680),
        ("vgg16", (224, 224, 3), 1000, {"head": "imagenet"}, 15_470_264_320),
    ],
)
def test_literature_forward_counts(name, input_shape, num_classes, options, expected):
    forward = flops.per_instance(name, input_shape, num_classes, **options)["forward"]
    assert forward == expected


def test_resnet18_is_about_1_82_gmacs():
    # 10 classes instead of 1000 removes 512 * 990 MACs from the FC layer.
    forward = flops.per_instance("resnet18", (224, 224, 3), 10)["forward"]
    assert forward == 1_814_073_344 - 512 * 990
    assert forward / 1e9 == pytest.approx(1.81, abs=0.01)


def test_results_are_cached_and_not_shared():
    first = flops.per_layer("resnet20", (32, 32, 3), 10)
    assert flops.per_layer("resnet20", [32, 32, 3], 10) is first  # lists are normalised
    counts = flops.per_instance("resnet20", (32, 32, 3), 10)
    counts["forward"] = -1  # the caller owns the dict; the cache is untouched
    assert flops.per_instance("resnet20", (32, 32, 3), 10)["forward"] > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        flops.per_instance("resnet9", (32, 32, 3), 10)
    with pytest.raises(ValueError, match="input_shape"):
        flops.per_instance("lenet", (28, 28), 10)
    with pytest.raises(ValueError, match="keep_ratio"):
        flops.emp_train("lenet", (28, 28, 1), 10, 0.0)
    with pytest.raises(ValueError, match="batch_size"):
        flops.emp_train("lenet", (28, 28, 1), 10, 0.5, batch_size=0)


# --- Error map pruning ---------------------------------------------------------------


def test_emp_keep_all_is_the_dense_count():
    for name in ("lenet", "resnet8"):
        dense = flops.per_instance(name, _input_shape(name), 10)
        pruned = flops.emp_train(name, _input_shape(name), 10, 1.0, batch_size=32)
        assert pruned["selection"] == 0  # EMP runs the exact dense backward: no scoring
        assert {k: pruned[k] for k in flops.KEYS} == dense


def test_emp_lenet_half_by_hand():
    conv1, conv2, fc1, fc2 = 288_000, 1_600_000, 400_000, 5_000
    k1, k2 = math.ceil(0.5 * 20), math.ceil(0.5 * 50)  # 10 of 20, 25 of 50 channels
    out = flops.emp_train("lenet", (28, 28, 1), 10, 0.5, prune_first_layer=True)
    assert out["forward"] == 2_293_000  # the forward pass is not pruned
    # Conv backward parts scale by exactly k / n; conv1 has no error propagation; the
    # dense layers are not pruned.
    assert out["error_propagation"] == conv2 * k2 // 50 + fc1 + fc2  # 1,205,000
    assert out["weight_gradient"] == conv1 * k1 // 20 + conv2 * k2 // 50 + fc1 + fc2
    assert out["weight_gradient"] == 1_349_000
    # Selection (batch_size=1 charges the per-batch part to the one instance):
    per_instance = 24 * 24 * 20 + 8 * 8 * 50  # |delta| summed over positions: 14,720
    per_batch = (
        (5 * 5 * 1 * 20 + 3 * 20 + 20 * 5)  # ||W_j||_1, score combine, top-k
        + (5 * 5 * 20 * 50 + 3 * 50 + 50 * 6)
    )  # (n * ceil(log2 n) compares)
    assert out["selection"] == per_instance + per_batch
    assert out["train"] == (
        out["forward"] + out["error_propagation"] + out["weight_gradient"] + out["selection"]
    )
    selection = flops.emp_selection("lenet", (28, 28, 1), 10, 0.5, 64, prune_first_layer=True)
    assert selection == 64 * per_instance + per_batch
    amortised = flops.emp_train(
        "lenet", (28, 28, 1), 10, 0.5, batch_size=64, prune_first_layer=True
    )["selection"]
    assert amortised == pytest.approx(per_instance + per_batch / 64)


def test_emp_lenet_half_with_the_first_conv_dense_by_hand():
    conv1, conv2, fc1, fc2 = 288_000, 1_600_000, 400_000, 5_000
    out = flops.emp_train("lenet", (28, 28, 1), 10, 0.5)  # The default: conv1 stays dense.
    assert out["forward"] == 2_293_000
    assert out["error_propagation"] == conv2 * 25 // 50 + fc1 + fc2
    assert out["weight_gradient"] == conv1 + conv2 * 25 // 50 + fc1 + fc2 == 1_493_000
    # Only conv2 is scored: |delta| over 8x8x50 per instance; its kernel norms, score
    # combination and top-k once per batch.
    assert out["selection"] == 8 * 8 * 50 + (5 * 5 * 20 * 50 + 3 * 50 + 50 * 6)


def test_emp_kept_count_is_exact():
    # 0.3 * 20 == 6.000000000000001 and 0.3 * 50 == 15.000000000000002 in floats; the
    # kept counts are 6 and 15 (emp.TopK.num_kept), not 7 and 16.
    out = flops.emp_train("lenet", (28, 28, 1), 10, 0.3, prune_first_layer=True)
    assert out["weight_gradient"] == 288_000 * 6 // 20 + 1_600_000 * 15 // 50 + 405_000


def test_emp_agrees_with_emp_backward_macs():
    keep = 0.3
    layers = flops.per_layer("resnet8", (32, 32, 3), 10)
    out = flops.emp_train("resnet8", (32, 32, 3), 10, keep, prune_first_layer=True)
    backward = 0
    for layer in layers:
        if layer.kind == "conv":
            k = emp.TopK(keep).num_kept(layer.output_channels)  # 5 of 16, 10/32, 20/64
            both = emp.backward_macs(
                (1, *layer.output_shape),
                layer.kernel_shape,
                dimension_numbers=NHWC,
                kept_channels=k,
            )
            # the first layer's error propagation (half of `both`) is not needed.
            backward += both // 2 if layer is layers[0] else both
        else:
            backward += layer.error_propagation + layer.weight_gradient
    assert out["error_propagation"] + out["weight_gradient"] == backward


# --- Bit widths ----------------------------------------------------------------------


def test_bit_ops():
    assert flops.scale_for_bits(32) == 1.0
    assert flops.scale_for_bits(8) == 1 / 16
    assert flops.scale_for_bits(8, 32) == 1 / 4
    assert flops.bit_ops(2_293_000, 32) == 2_293_000
    assert flops.bit_ops(2_293_000, 8, 8) == 2_293_000 * 64 / 1024
    with pytest.raises(ValueError, match="bits_a"):
        flops.scale_for_bits(0)
    with pytest.raises(ValueError, match="bits_b"):
        flops.scale_for_bits(8, 2.5)


# --- Cross-check against XLA's cost analysis -----------------------------------------
#
# XLA reports 2 flops per multiply-accumulate, and for a padded convolution it counts only
# the (output, tap) pairs that read real input, never the zero padding; the backward
# convolutions (Eq. 8 transposed conv, Eq. 12 weight gradient) cost the same set of
# products as the forward. So XLA's conv count is 2 x LayerCost.unpadded_forward, which
# equals THOP's count for unpadded layers (LeNet) and is 7.6% lower for ResNet-8's 3x3
# "SAME" convs (94^2 of 96^2 taps at 32x32, 46^2 of 48^2 at 16x16, 22^2 of 24^2 at 8x8).
# On top of the conv/dot flops XLA counts every elementwise op, which THOP leaves out:
# bias adds, batch norm, ReLU, max-pool compares, residual adds, global mean, softmax and
# the loss, and in the gradient their backward (ReLU/pool selects, bias-gradient sums,
# batch-norm statistics and their gradients). These only add, so each ratio below is
# bounded by 1 from below; the upper bounds are the measured ratios plus a small margin.


def _xla_flops(fn, *args) -> float:
    """XLA's flop count for ``jax.jit(fn)`` compiled on CPU."""
    args = jax.device_put(args, CPU)  # committed CPU inputs: compile for CPU on any host
    return xla_flops(compile_as_shipped(jax.jit(fn), *args))


def _xla_counts(name: str, batch: int, with_input: bool) -> tuple[float, float, float | None]:
    """XLA flops per instance (flops / batch): forward, gradient, gradient incl. input."""
    shape = _input_shape(name)
    model = models.create(name, 10)
    x = jnp.zeros((batch, *shape))
    labels = jnp.zeros((batch,), jnp.int32)
    variables = numpy_variables(model, x, train=False)  # Values do not change the count.
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def forward(variables, x):
        return model.apply(variables, x, train=False)

    def loss(params, x):
        if state:  # train-mode batch norm, as in a training step
            logits, _ = model.apply(
                {"params": params, **state}, x, train=True, mutable=["batch_stats"]
            )
        else:
            logits = model.apply({"params": params}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return (
        _xla_flops(forward, variables, x) / batch,
        _xla_flops(jax.grad(loss), params, x) / batch,
        _xla_flops(jax.grad(loss, argnums=(0, 1)), params, x) / batch if with_input else None,
    )


# Measured with jax 0.10.2 on CPU, XLA flops per instance against 2 x MACs:
#   lenet   (batch 8): forward 4,627,490 = 1.0090 x 2 x 2,293,000;
#                      grad 13,409,487 = 1.0173 x 2 x 6,591,000.
#   resnet8 (batch 4): forward 23,206,678 = 1.0257 x 2 x 11,312,448 unpadded (0.948 x THOP);
#                      grad 69,449,816 = 1.0362 x 2 x 33,513,216 unpadded (0.957 x THOP).
# The lenet gradient's extra 227,487 flops per instance are the forward's 41,490 plus the
# backward's: ReLU vjp (compare + select, 2 x 15,220), bias gradients (one add per
# element, 15,230), max-pool backward (select-and-scatter) and the softmax cross-entropy.
# ResNet-8's are larger (7.9 flops per conv output element in the forward, 32.9 in the
# gradient) because of batch norm: its affine in eval mode, its batch statistics and
# their backward in train mode.
@pytest.mark.parametrize(
    "name, batch, forward_max, train_max",
    [
        ("lenet", 8, 1.02, 1.03),
        ("resnet8", 4, 1.04, 1.05),
    ],
)
def test_xla_cost_analysis_agrees(name, batch, forward_max, train_max):
    with_input = name == "lenet"  # one compile fewer; resnet8 measured the same (below)
    layers = flops.per_layer(name, _input_shape(name), 10)
    thop = flops.per_instance(name, _input_shape(name), 10)
    unpadded = sum(layer.unpadded_forward for layer in layers)
    first = layers[0].unpadded_forward
    unpadded_train = 3 * unpadded - first  # same convention: no input error for layer 0
    conv_outputs = sum(math.prod(layer.output_shape) for layer in layers if layer.kind == "conv")

    xla_forward, xla_train, xla_train_with_input = _xla_counts(name, batch, with_input)

    assert 1.0 < xla_forward / (2 * unpadded) < forward_max
    assert 1.0 < xla_train / (2 * unpadded_train) < train_max
    # At least one elementwise op (the ReLU) per conv output is on top of the MACs.
    assert xla_forward - 2 * unpadded >= conv_outputs
    # The first layer's input error: with gradients w.r.t. the parameters only, XLA drops
    # the transposed conv of layer 0 as dead code, exactly as our convention assumes;
    # asking for the input's gradient too adds precisely that conv (2 flops per MAC).
    # Measured: lenet +2 x 288,000 flops per instance; resnet8 +2 x 424,128, its stem's
    # unpadded count (the transposed conv skips the padding taps as well).
    if with_input:
        assert xla_train_with_input - xla_train == 2 * first
    if name == "lenet":
        # Exact decomposition of the forward: 2 flops per MAC plus one flop per bias add
        # (11,520 + 3,200 + 500 + 10), per ReLU (11,520 + 3,200 + 500) and 3 compares per
        # 2x2 max-pool output (3 * (2,880 + 800)): 41,490 flops per instance.
        elementwise = (11_520 + 3_200 + 500 + 10) + (11_520 + 3_200 + 500) + 3 * (2_880 + 800)
        assert xla_forward == pytest.approx(2 * thop["forward"] + elementwise, rel=1e-4)
        assert thop["forward"] == unpadded and thop["train"] == unpadded_train
    else:
        # THOP counts the padding taps, XLA does not: XLA's total is below THOP's even
        # with all the elementwise work added.
        assert xla_forward / (2 * thop["forward"]) < 0.97
        assert xla_train / (2 * thop["train"]) < 0.97
