"""Tests of edgefilter.accounting: the summary's compute block against hand arithmetic.

MACs of one 28x28x1 instance, worked by hand (PAPER.md, "Computation accounting"):

LeNet (10 classes): conv 5x5x1->20 on 24x24: 288,000; conv 5x5x20->50 on 8x8: 1,600,000;
FC 800->500: 400,000; FC 500->10: 5,000. Forward 2,293,000; weight gradients equal the
forward; error propagation skips the first layer: 2,005,000; train 6,591,000.
With EMP keeping half the channels (10 of 20, 25 of 50), the conv layers' backward
halves: error propagation 800,000 + 405,000, weight gradients 144,000 + 800,000 + 405,000,
so the backward is 2,554,000 instead of 4,298,000.

Slim LeNet filter (2 classes): conv 3x3x1->6 on 26x26: 36,504; conv 3x3x6->16 on 11x11:
104,544; FC 400->120: 48,000; FC 120->2: 240. Forward 189,288; train 531,360.
"""

from types import SimpleNamespace

import pytest

from edgefilter import data as data_lib
from edgefilter.method import flops
from edgefilter.training import accounting
from edgefilter.training import config as config_lib

INFO = data_lib.DatasetInfo("tiny", 10, (28, 28, 1), (0.15,), (0.3,))
LENET = dict(
    forward=2_293_000, error_propagation=2_005_000, weight_gradient=2_293_000, train=6_591_000
)
LENET_BACKWARD = 2_005_000 + 2_293_000
LENET_EMP_BACKWARD = 2_698_000  # conv1 dense, conv2 keeps 25 of 50 (test_flops by hand).
LENET_EMP_ALL_BACKWARD = 2_554_000  # conv1 keeps 10 of 20 too.
# EMP's channel selection for one batch of M = 16 (emp.selection_macs: one operation per
# error-map element and per kernel weight, 3 n, and n * ceil(log2 n) compares). conv2
# (8x8x50 maps, 5x5x20x50 kernel): 16*8*8*50 + 5*5*20*50 + 3*50 + 50*6 = 51,200 + 25,000
# + 150 + 300; conv1 (24x24x20, 5x5x1x20): 16*24*24*20 + 500 + 60 + 20*5 = 184,980.
LENET_EMP_SELECTION = 76_650
LENET_EMP_ALL_SELECTION = 76_650 + 184_980
SLIM_FORWARD, SLIM_TRAIN = 189_288, 531_360
M = 16
# Every method's breakdown has every key (summary.json's keys do not depend on the method).
UNUSED = dict.fromkeys(
    (
        "emp_selection",
        "filter_inference",
        "filter_training",
        "uncertainty_forward",
        "selection_forward",
    ),
    0,
)


def _config(**kwargs):
    return config_lib.resolve(
        config_lib.from_flags(
            {"model": "lenet", "dataset": "mnist", "batch_size": M, "eif_batch_size": M, **kwargs}
        )
    )


def _loop(main_steps, position, chunk, filter_steps=None):
    """What run_compute reads of the loop state; no training needed."""
    loop = {"state": SimpleNamespace(step=main_steps), "position": position, "chunk": chunk}
    if filter_steps is not None:
        loop["filter"] = SimpleNamespace(net=SimpleNamespace(step=filter_steps))
    return loop


def test_sgd_on_whole_chunks_costs_exactly_sgd():
    out = accounting.run_compute(_config(), INFO, _loop(10, 160, 10))
    assert out["unit"] == "MAC"
    assert out["per_instance"] == LENET
    assert out["breakdown"] == {
        **UNUSED,
        "main_forward": 160 * 2_293_000,
        "main_backward": 160 * LENET_BACKWARD,
    }
    assert out["total"] == out["sgd_same_stream"] == 160 * 6_591_000
    assert out["reduction"] == 0.0


def test_sgd_counts_the_padding_of_a_partial_last_chunk():
    # 150 instances streamed in 10 chunks of 16: the last batch has 6 padding slots.
    out = accounting.run_compute(_config(), INFO, _loop(10, 150, 10))
    assert out["total"] == 160 * 6_591_000 and out["sgd_same_stream"] == 150 * 6_591_000
    assert out["reduction"] == pytest.approx(1 - 160 / 150)


def test_emp_scales_the_main_backward_and_adds_the_selection():
    out = accounting.run_compute(_config(method="emp", emp_keep=0.5), INFO, _loop(10, 160, 10))
    pruned = flops.emp_train("lenet", (28, 28, 1), 10, 0.5, batch_size=M)
    assert pruned["error_propagation"] + pruned["weight_gradient"] == LENET_EMP_BACKWARD
    selection = 10 * LENET_EMP_SELECTION  # One selection per batch of M.
    assert out["breakdown"]["main_forward"] == 160 * 2_293_000
    assert out["breakdown"]["main_backward"] == 160 * LENET_EMP_BACKWARD
    assert out["breakdown"]["emp_selection"] == selection
    total = 160 * (2_293_000 + LENET_EMP_BACKWARD) + selection
    assert out["total"] == total and not out["emp_counted_dense"]
    assert out["reduction"] == pytest.approx(1 - total / (160 * 6_591_000))


def test_emp_first_layer_prunes_the_first_conv_in_the_count_too():
    config = _config(method="emp", emp_keep=0.5, emp_first_layer=True)
    out = accounting.run_compute(config, INFO, _loop(10, 160, 10))
    assert out["breakdown"]["main_backward"] == 160 * LENET_EMP_ALL_BACKWARD
    assert out["breakdown"]["emp_selection"] == 10 * LENET_EMP_ALL_SELECTION


def test_emp_threshold_policy_is_counted_dense_and_says_so():
    config = _config(method="emp", emp_policy="threshold")
    out = accounting.run_compute(config, INFO, _loop(10, 160, 10))
    assert out["emp_counted_dense"]
    assert out["breakdown"]["main_backward"] == 160 * LENET_BACKWARD
    assert out["breakdown"]["emp_selection"] == 0 and out["reduction"] == 0.0


def _eif_breakdown(main_steps, chunks, filter_steps, probes, batch=M):
    return {
        **UNUSED,
        "main_forward": main_steps * batch * 2_293_000,
        "main_backward": main_steps * batch * LENET_BACKWARD,
        "emp_selection": 0,
        "filter_inference": chunks * M * SLIM_FORWARD,
        "filter_training": filter_steps * (batch + probes) * SLIM_TRAIN,
        "uncertainty_forward": main_steps * probes * 2_293_000,
    }


def test_eif_counts_the_filter_and_the_probes():
    config = _config(method="eif")
    assert config.filter_model == "lenet_slim" and config.eif_probe_size == 2
    out = accounting.run_compute(config, INFO, _loop(3, 160, 10, filter_steps=3))
    expected = _eif_breakdown(3, 10, 3, 2)
    assert out["breakdown"] == expected
    total = sum(expected.values())
    assert out["total"] == total and out["sgd_same_stream"] == 160 * 6_591_000
    assert out["reduction"] == pytest.approx(1 - total / (160 * 6_591_000))


def test_eif_counts_its_own_main_batch_size():
    # Main steps of 5 packed instances (and 5 // 8 -> 1 probe) while chunks hold M.
    config = _config(method="eif", eif_batch_size=5)
    assert config.eif_probe_size == 1
    out = accounting.run_compute(config, INFO, _loop(10, 160, 10, filter_steps=10))
    assert out["breakdown"] == _eif_breakdown(10, 10, 10, 1, batch=5)


def test_eif_without_any_sampling_probes_nothing():
    config = _config(method="eif", eif_uncertainty=False, eif_random_probes=0)
    out = accounting.run_compute(config, INFO, _loop(3, 160, 10, filter_steps=3))
    assert out["breakdown"] == _eif_breakdown(3, 10, 3, 0)


def test_eight_bit_training_is_counted_in_bit_operations():
    config = _config(method="eif", bits=8)
    out = accounting.run_compute(config, INFO, _loop(3, 160, 10, filter_steps=3))
    assert out["unit"] == "BOP"
    # An 8x8-bit MAC is 64 / 1024 of a 32x32-bit one; the SGD reference stays 32-bit.
    expected = {k: round(v * 64 / 1024) for k, v in _eif_breakdown(3, 10, 3, 2).items()}
    assert out["breakdown"] == expected
    assert out["sgd_same_stream"] == 160 * 6_591_000
    total = sum(_eif_breakdown(3, 10, 3, 2).values()) * 64 / 1024
    assert out["total"] == round(total)
    assert out["reduction"] == pytest.approx(1 - total / (160 * 6_591_000))
