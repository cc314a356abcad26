"""experiments/configs: one config per row of the paper's table, checked against PAPER.md.

Every config is loaded from its file as ``--config`` loads it, resolved at full size and
shrunk, and its docstring must give its exact command. The paper's settings are checked
against numbers typed here from PAPER.md's text (the LeNet, a CIFAR ResNet and an
ImageNet row), and each EIF+EMP and OHEM variant's counted reduction against the
paper's, with a steady-state count written here and checked against a real run's.

Shrunk runs go through the real command (``python -m experiments.train
--config=...,shrink``, forked from one server that imported JAX once), compiled as
the whole suite compiles, at XLA's -O0 and without its fusion emitters (``conftest``):
a shrunk ResNet-8 EIF+EMP run compiled in 6 s instead of 39. Compiling is nearly all of a
shrunk run's cost, so not every config runs: :data:`RUNS` holds every method of the
LeNet row, one ResNet-8 config (EIF, EMP and 8 bits together) and one ResNet-10 config
(ImageNet-shaped, stochastic depth); on a 2-core VM they take about 40 s of CPU. Each
VGG config would add over 30 s (VGG-11 shrunk: 37 s at XLA's default -O2, two minutes
at -O0) and each other ResNet-8 variant 10-30 s; the default suite resolves them and
traces their shrunk shapes (``preflight.check_run``) only, and
:func:`test_every_other_config_trains_a_few_steps_shrunk`, marked ``slow`` and so
deselected by default, runs each of them shrunk: ``pytest -m slow tests/test_configs.py``.
"""

import dataclasses
import importlib
import json
import math
import os

import pytest

from edgefilter import data as data_lib
from edgefilter.method import flops
from edgefilter.training import budget as budget_lib
from edgefilter.training import config as config_lib
from edgefilter.training import preflight
from edgefilter.training import steps as steps_lib
from experiments import cli, config_file, configs, shrink, train
from tests.conftest import ROOT, command_server

ALL = [
    (row, variant)
    for row in configs.ROWS
    for variant in importlib.import_module(f"experiments.configs.{row}").VARIANTS
]


def spec(row: str, variant: str) -> str:
    return f"{configs.FOLDER}/{row}.py:{variant}"


@pytest.fixture(autouse=True)
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # The config paths are relative to the repository root.


def test_rows_are_the_folder_s_config_files():
    files = {f[:-3] for f in os.listdir(os.path.join(ROOT, configs.FOLDER)) if f.endswith(".py")}
    assert files - {"__init__", "common"} == set(configs.ROWS)


@pytest.mark.parametrize("row, variant", ALL)
def test_every_config_resolves_full_and_shrunk_and_documents_its_command(row, variant):
    loaded = config_file.load(spec(row, variant))
    assert not loaded.shrink
    full = config_lib.resolve(loaded.config)
    assert row == f"{full.model}_{full.dataset.removesuffix('2012')}"
    shrunk = config_lib.resolve(shrink.config(loaded.config))
    preflight.check_run(shrunk, shrink.dataset(shrunk))  # Shapes, labels: traced only.
    doc = " ".join(importlib.import_module(f"experiments.configs.{row}").__doc__.split())
    command = f"python -m experiments.train --workdir=runs/{row}/{variant} \\"
    assert f"{command} --config={spec(row, variant)}" in doc


def test_shrink_changes_only_the_network_the_run_s_length_and_its_batch():
    full = config_file.load(spec("resnet110_cifar10", "eif_emp_68")).config
    shrunk = shrink.config(full)
    assert (shrunk.model, shrunk.steps, shrunk.epochs, shrunk.batch_size) == ("resnet8", 2, None, 8)
    changed = {"model", "steps", "epochs", "batch_size", "eval_batch_size", "block_chunks"}
    changed |= {"log_every_steps", "eif_batch_size", "eif_probe_size"}
    assert dataclasses.replace(shrunk, **{f: getattr(full, f) for f in changed}) == full
    data = shrink.dataset(
        config_lib.resolve(config_file.load(spec("vgg11_imagenet", "sgd")).config)
    )
    assert data.train_images.shape == (shrink.TRAIN, 32, 32, 3) and data.info.num_classes == 1000
    assert set(data.test_labels) <= set(data.train_labels)


# --- The paper's settings, typed from PAPER.md ("Training settings") -------------------------


def _schedule(config, total_steps, at):
    schedule = steps_lib.learning_rate_schedule(config, total_steps)
    return [float(schedule(step)) for step in at]


def test_lenet_mnist_has_the_paper_s_settings():
    # "MNIST, LeNet: lr 0.01, momentum 0.5, batch 64, 18.7k iterations (20 epochs); filter
    # lr 0.1 decayed to 0.05 after 0.94k iterations." MNIST has 60,000 training images.
    config = config_lib.resolve(config_file.load(spec("lenet_mnist", "eif_emp_79")).config)
    iterations = preflight.stream_length(config, 60_000) // config.batch_size
    assert (config.model, config.dataset, config.batch_size) == ("lenet", "mnist", 64)
    assert iterations == 18_750 and iterations // 100 == 187  # "18.7k"
    assert (config.learning_rate, config.momentum) == (0.01, 0.5)
    assert _schedule(config, iterations, [0, iterations - 1]) == pytest.approx([0.01, 0.01])
    assert (config.filter_model, config.filter_learning_rate) == ("lenet_slim", 0.1)
    assert config.filter_lr_decay_steps == 940


@pytest.mark.parametrize(
    "row, model, dataset, batch, iterations, drops, filter_model",
    [
        # "CIFAR-10/100, ResNet-110 ...: SGD momentum 0.9, weight decay 1e-4, batch 128, 64k
        # iterations, lr 0.1 divided by 10 at 32k and 48k; filter lr 0.1." Filter: ResNet-8.
        ("resnet110_cifar10", "resnet110", "cifar10", 128, 64_000, (32_000, 48_000), "resnet8"),
        # "ImageNet, ResNet-18 / VGG-11: batch 256, 450k iterations, lr /10 at 150k and 300k."
        (
            "resnet18_imagenet",
            "resnet18",
            "imagenet2012",
            256,
            450_000,
            (150_000, 300_000),
            "resnet10",
        ),
    ],
)
def test_a_resnet_row_has_the_paper_s_settings(
    row, model, dataset, batch, iterations, drops, filter_model
):
    config = config_lib.resolve(config_file.load(spec(row, "sgd")).config)
    assert (config.model, config.dataset, config.batch_size) == (model, dataset, batch)
    assert config.steps == iterations
    assert (config.momentum, config.weight_decay) == (0.9, 1e-4)
    at = [0, drops[0] - 1, drops[0], drops[1] - 1, drops[1], iterations - 1]
    lrs = [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert _schedule(config, iterations, at) == pytest.approx(lrs)
    assert (config.filter_model, config.filter_learning_rate) == (filter_model, 0.1)


# --- Counted reductions against the paper's ("Reported results") ----------------------------


def steady_state_reduction(config: config_lib.TrainConfig, info: data_lib.DatasetInfo) -> float:
    """1 - cost / SGD's per mini-batch, as summary.json counts it (PAPER.md "Computation
    accounting"): EIF+EMP's filter inference on the m streamed, the filter's training and
    the main network's forward on its kept and probed instances, the kept ones' pruned
    backward and EMP's selection; OHEM's forward on all m and training on the kept."""
    shape, classes, m = info.image_shape, info.num_classes, config.batch_size
    dense = flops.per_instance(config.model, shape, classes)
    sgd = m * dense["train"]
    if config.method == "ohem":
        kept = max(1, round(config.filter.r_set * m))
        return 1 - (m * dense["forward"] + kept * dense["train"]) / sgd
    kept, probes = config.eif_batch_size, config.eif_probe_size
    pruned = flops.emp_train(config.model, shape, classes, config.emp.keep_ratio, batch_size=kept)
    filt = flops.per_instance(config.filter_model, shape, 2)
    cost = kept * pruned["train"] + probes * dense["forward"]
    cost += m * filt["forward"] + (kept + probes) * filt["train"]
    return 1 - cost / sgd


@pytest.mark.parametrize(
    "row, variant, paper",  # PAPER.md's table, in percent.
    [
        ("resnet110_cifar10", "eif_emp_68", 67.84),
        ("resnet110_cifar10", "ohem", 60.45),
        ("resnet74_cifar10", "eif_emp_64", 63.91),
        ("resnet74_cifar10", "ohem", 60.59),
        ("vgg16_cifar10", "eif_emp_67", 67.33),
        ("vgg16_cifar10", "ohem", 60.41),
        ("lenet_mnist", "eif_emp_79", 78.60),
        ("resnet110_cifar100", "eif_emp_50", 50.02),
        ("resnet110_cifar100", "eif_emp_56", 56.24),
        ("resnet110_cifar100", "ohem", 47.01),
        ("vgg16_cifar100", "eif_emp_50", 50.49),
        ("vgg16_cifar100", "eif_emp_54", 53.86),
        ("vgg16_cifar100", "ohem", 46.99),
        ("resnet18_imagenet", "eif_emp_59", 58.91),
        ("resnet18_imagenet", "eif_emp_65", 64.71),
        ("resnet18_imagenet", "ohem", 46.67),
        ("vgg11_imagenet", "eif_emp_52", 51.63),
        ("vgg11_imagenet", "eif_emp_61", 60.59),
        ("vgg11_imagenet", "ohem", 46.59),
    ],
)
def test_a_variant_s_counted_reduction_is_the_paper_s(row, variant, paper):
    config = config_lib.resolve(config_file.load(spec(row, variant)).config)
    counted = 100 * steady_state_reduction(config, data_lib.info(config.dataset))
    assert counted == pytest.approx(paper, abs=1.0)


def test_lenet_ohem_trains_the_least_it_can_the_paper_s_reduction_being_out_of_reach():
    config = config_lib.resolve(config_file.load(spec("lenet_mnist", "ohem")).config)
    info = data_lib.info("mnist")
    assert round(config.filter.r_set * config.batch_size) == 1  # One instance of 64.
    lenet = flops.per_instance("lenet", info.image_shape, info.num_classes)
    limit = 1 - lenet["forward"] / lenet["train"]  # OHEM's forward on everything alone.
    assert 100 * limit < 65.24  # The paper's OHEM figure.
    assert steady_state_reduction(config, info) < limit


# --- Shrunk runs through the real command ------------------------------------------------------

RUNS = [
    ("lenet_mnist", "sgd"),
    ("lenet_mnist", "eif_emp_79"),
    ("lenet_mnist", "ohem"),
    ("resnet110_cifar10", "eif_emp_8bit"),  # ResNet-8 with the filter, EMP and 8 bits.
    ("resnet18_imagenet", "sd"),  # ResNet-10 on 32x32 images, blocks bypassed.
]


@pytest.fixture(scope="module")
def shrunk_run(tmp_path_factory):
    """``shrunk_run(row, variant) -> (exit status, stderr, summary)``, each run once."""
    done = {}
    with command_server() as run:

        def shrunk(row, variant):
            if (row, variant) not in done:
                workdir = tmp_path_factory.mktemp("run") / "w"
                config = f"--config={spec(row, variant)},shrink"
                status, err = run("experiments.train", config, f"--workdir={workdir}")
                summary = workdir / "summary.json"
                done[row, variant] = (
                    status,
                    err,
                    summary.exists() and json.loads(summary.read_text()),
                )
            return done[row, variant]

        yield shrunk


def check_shrunk_run(shrunk_run, row, variant):
    """The shrunk run exited 0 and its summary.json records the config's method and bits,
    the smallest network of its family and :data:`shrink.STEPS` steps of its batch, all
    streamed (SMB: the first ``--budget`` of them, as it does at full size)."""
    status, err, summary = shrunk_run(row, variant)
    assert status == 0, err
    full = config_file.load(spec(row, variant)).config
    recorded = summary["config"]
    assert recorded["method"] == full.method and recorded["bits"] == full.bits
    assert recorded["model"] == shrink.SMALLEST.get(full.model, full.model)
    assert recorded["steps"] == shrink.STEPS
    streamed = shrink.STEPS * shrink.BATCH
    if full.method == "smb":
        budget = config_lib.resolve(full).budget
        streamed = budget_lib.smb_length(streamed, shrink.BATCH, budget)
    assert summary["instances_streamed"] == streamed
    assert math.isfinite(summary["compute"]["reduction"])
    assert err.count("warning: shrink: ") == 1


@pytest.mark.parametrize("row, variant", RUNS)
def test_a_shrunk_config_trains_a_few_steps(shrunk_run, row, variant):
    check_shrunk_run(shrunk_run, row, variant)


@pytest.mark.slow
@pytest.mark.parametrize("row, variant", [run for run in ALL if run not in RUNS])
def test_every_other_config_trains_a_few_steps_shrunk(shrunk_run, row, variant):
    """Every config variant :data:`RUNS` leaves out, run shrunk as they are (issue 21: the
    tests run every config shrunk). Marked ``slow``, so the default command deselects it
    (pyproject's ``addopts``): 38 runs, nearly all compiling, about 18 minutes on one core
    (10 with ``-n 2``, VGG's the longest at 30-100 s each). Run it with
    ``pytest -m slow tests/test_configs.py`` (add ``-n auto`` to spread it over cores)."""
    check_shrunk_run(shrunk_run, row, variant)


def test_the_steady_state_count_is_what_a_run_counts(shrunk_run):
    _, _, summary = shrunk_run("lenet_mnist", "eif_emp_79")
    shrunk = config_lib.from_flags(summary["config"])
    info = shrink.dataset(shrunk).info
    assert summary["compute"]["reduction"] == pytest.approx(steady_state_reduction(shrunk, info))


# --- --config on the command line ---------------------------------------------------------------


def test_flags_beside_config_override_it_after_the_shrink(fresh_flags):
    config = f"--config={spec('resnet110_cifar10', 'eif_emp_68')},shrink"
    cli.parse_flags(["prog", config, "--r_set=0.5", "--epochs=2"])
    config, shrunk = train.run_config()
    assert shrunk and config.model == "resnet8" and config.filter.r_set == 0.5
    assert (config.epochs, config.steps) == (2, None)  # --epochs replaces the length.
    assert (config.momentum, config.emp.keep_ratio, config.method) == (0.9, 0.5, "eif_emp")


@pytest.mark.parametrize(
    "value, message",
    [
        (
            "experiments/configs/nonesuch.py:sgd",
            "there is no file 'experiments/configs/nonesuch.py'",
        ),
        ("experiments/configs/lenet_mnist.py:sgb", "unknown variant 'sgb'; choose one of sgd, "),
        ("experiments/configs/lenet_mnist.py", "no variant; choose one of sgd, eif_emp_79, ohem"),
    ],
)
def test_a_bad_config_exits_2_with_one_line_and_writes_nothing(
    tmp_path, capsys, fresh_flags, value, message
):
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:  # What app.run does with the command line.
        train.main(
            cli.parse_flags(["experiments.train", f"--config={value}", f"--workdir={workdir}"])
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --config={value!r} is invalid: ") and message in err
    assert err.count("\n") == 1
    assert not workdir.exists()
