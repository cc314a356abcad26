"""Tests of edgefilter.training.config: the paper's defaults, validation, and the flags."""

import jax
import numpy as np
import pytest

from edgefilter.method import emp
from edgefilter.training import config as config_lib
from edgefilter.training import steps as train_lib

TrainConfig, FilterConfig, EmpConfig = (
    config_lib.TrainConfig,
    config_lib.FilterConfig,
    config_lib.EmpConfig,
)


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "idx:/some/folder"])
def test_mnist_family_gets_the_papers_lenet_settings(dataset):
    config = config_lib.resolve(TrainConfig(model="lenet", dataset=dataset, method="eif"))
    assert config_lib.dataset_family(dataset) == "mnist"
    assert (config.learning_rate, config.momentum, config.weight_decay) == (0.01, 0.5, 0.0)
    assert config.batch_size == 64 and config.epochs == 20.0 and config.steps is None
    assert config.lr_boundaries == ()
    assert config.filter_model == "lenet_slim"
    assert config.filter_lr_decay_steps == 940  # lr 0.1 -> 0.05 after 0.94k iterations.
    assert config.eif_batch_size == 19  # round(0.3 * 64): one main step per chunk.
    assert config.eif_probe_size == 19 // 8


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_family_gets_the_papers_resnet_settings(dataset):
    config = config_lib.resolve(TrainConfig(model="resnet110", dataset=dataset))
    assert (config.learning_rate, config.momentum, config.weight_decay) == (0.1, 0.9, 1e-4)
    assert config.batch_size == 128 and config.steps == 64_000 and config.epochs is None
    assert config.lr_boundaries == (0.5, 0.75)  # 32k and 48k of 64k.
    assert config.filter_model == "resnet8" and config.filter_lr_decay_steps == 0
    assert config.eif_batch_size == 38 and config.eif_probe_size == 38 // 8


def test_imagenet_family_gets_the_papers_resnet18_settings():
    config = config_lib.resolve(TrainConfig(model="resnet18", dataset="imagenet2012"))
    assert config_lib.dataset_family("imagenet2012") == "imagenet"
    assert (config.learning_rate, config.momentum, config.weight_decay) == (0.1, 0.9, 1e-4)
    assert config.batch_size == 256 and config.steps == 450_000
    assert config.lr_boundaries == pytest.approx((1 / 3, 2 / 3))  # 150k and 300k of 450k.
    assert config.filter_model == "resnet10" and config.eif_batch_size == 77
    assert config.eif_probe_size == 77 // 8


def test_given_values_are_kept_and_only_none_is_filled():
    given = TrainConfig(
        dataset="cifar10",
        model="resnet20",
        learning_rate=0.05,
        batch_size=32,
        epochs=3.0,
        filter_model="lenet_slim",
        eif_probe_size=5,
    )
    config = config_lib.resolve(given)
    assert config.learning_rate == 0.05 and config.batch_size == 32
    assert config.epochs == 3.0 and config.steps is None  # --epochs replaces the 64k steps.
    assert config.filter_model == "lenet_slim" and config.eif_probe_size == 5
    assert config.momentum == 0.9
    assert config_lib.resolve(config) == config  # Idempotent.
    steps = config_lib.resolve(TrainConfig(dataset="mnist", steps=10))
    assert steps.steps == 10 and steps.epochs is None


@pytest.mark.parametrize(
    "r_set, batch_size, eif_batch",
    [(0.3, 64, 19), (0.4, 128, 51), (0.1, 64, 6), (0.01, 32, 1), (0.99, 16, 16)],
)
def test_eif_batch_is_r_set_of_the_chunk_by_default(r_set, batch_size, eif_batch):
    # The paper keeps 51 of 128 per mini-batch at R_set = 0.4.
    config = config_lib.resolve(
        TrainConfig(dataset="mnist", filter=FilterConfig(r_set=r_set), batch_size=batch_size)
    )
    assert config.eif_batch_size == eif_batch
    given = config_lib.resolve(TrainConfig(dataset="mnist", eif_batch_size=24))
    assert given.batch_size == 64 and given.eif_batch_size == 24


@pytest.mark.parametrize("eif_batch, probes", [(64, 8), (32, 4), (12, 1), (4, 1)])
def test_probe_size_is_an_eighth_of_the_main_batch_and_at_least_one(eif_batch, probes):
    config = config_lib.resolve(TrainConfig(dataset="mnist", eif_batch_size=eif_batch))
    assert config.eif_probe_size == probes


def test_without_any_sampling_nothing_is_probed():
    for probe_size in (None, 6):
        config = config_lib.resolve(
            TrainConfig(
                dataset="mnist",
                filter=FilterConfig(uncertainty=False),
                eif_random_probes=0,
                eif_probe_size=probe_size,
            )
        )
        assert config.eif_probe_size == 0


def test_random_probes_alone_still_need_probe_slots():
    config = config_lib.resolve(
        TrainConfig(dataset="mnist", filter=FilterConfig(uncertainty=False), eif_random_probes=1)
    )
    assert config.eif_probe_size == 19 // 8


def test_label_rate_defaults_to_r_set():
    config = config_lib.resolve(TrainConfig(filter=FilterConfig(r_set=0.2)))
    assert config.filter.label_rate == 0.2
    given = config_lib.resolve(TrainConfig(filter=FilterConfig(label_rate=0.1)))
    assert given.filter.label_rate == 0.1


def test_xla_cpu_defaults_to_whether_jax_runs_on_the_cpu():
    assert config_lib.resolve(TrainConfig()).xla_cpu == (jax.default_backend() == "cpu")
    assert config_lib.resolve(TrainConfig(xla_cpu=False)).xla_cpu is False


# Every flag of `python -m experiments.train` that sets the run (--workdir and --progress
# aside), with the default it had before the flags were derived from the config classes.
FLAG_DEFAULTS = {
    "model": "lenet",
    "dataset": "fashion_mnist",
    "method": "sgd",
    "bits": 32,
    "epochs": None,
    "steps": None,
    "batch_size": None,
    "learning_rate": None,
    "momentum": None,
    "weight_decay": None,
    "lr_boundaries": None,
    "seed": 0,
    "data_dir": None,
    "eval_batch_size": 1000,
    "checkpoint_every_steps": 1000,
    "log_every_steps": 50,
    "block_chunks": 8,
    "xla_cpu": None,
    "snapshots": 4,
    "data_parallel": None,
    "coordinator_address": None,
    "num_processes": None,
    "process_id": None,
    "emp_policy": "topk",
    "emp_keep": 0.5,
    "emp_threshold": 1.0,
    "gamma1": 0.0,
    "gamma2": 1.0,
    "emp_first_layer": False,
    "r_set": 0.3,
    "alpha1": 1.05,
    "alpha2": 0.95,
    "eif_window": 10,
    "entropy_threshold": 0.5,
    "init_threshold": 1.0,
    "eif_static_threshold": False,
    "eif_uncertainty": True,
    "eif_weighted": True,
    "eif_control": "quantile",
    "eif_label_rate": None,
    "filter_model": None,
    "filter_learning_rate": 0.1,
    "filter_lr_decay_steps": None,
    "eif_batch_size": None,
    "eif_probe_size": None,
    "eif_random_probes": 1,
    "eif_history": False,
    "eif_predict_ahead": False,
    # smb, smd, sd, e2train: None takes the source's default for the method.
    "budget": None,
    "smd_skip": None,
    "sd_final_survival": None,
    "slu_beta": None,
    "slu_minimum": None,
    "select_emp": False,
    "sb_beta": 3.0,
    "sb_history": 1024,
    "sb_staleness": 3,
    "infobatch_prune": 0.5,
    "infobatch_delta": 0.875,
}


def test_every_flag_keeps_its_name_and_default():
    assert {f.name: f.default for f in config_lib.FLAGS} == FLAG_DEFAULTS
    assert config_lib.as_flags(TrainConfig()) == FLAG_DEFAULTS
    assert all(f.help for f in config_lib.FLAGS)


def test_flags_set_the_nested_settings_and_round_trip():
    values = {
        "method": "eif_emp",
        "lr_boundaries": ["0.5", "0.75"],  # As absl's list flags give them.
        "r_set": 0.2,
        "alpha1": 1.1,
        "alpha2": 0.9,
        "eif_window": 4,
        "entropy_threshold": 0.3,
        "init_threshold": 2.0,
        "eif_static_threshold": True,
        "eif_uncertainty": False,
        "eif_weighted": False,
        "eif_control": "argmax",
        "eif_label_rate": 0.1,
        "emp_policy": "threshold",
        "emp_keep": 0.25,
        "emp_threshold": 0.8,
        "gamma1": 0.5,
        "gamma2": 2.0,
        "emp_first_layer": True,
    }
    config = config_lib.from_flags(values)
    assert config == TrainConfig(
        method="eif_emp",
        lr_boundaries=(0.5, 0.75),
        filter=FilterConfig(
            r_set=0.2,
            alpha1=1.1,
            alpha2=0.9,
            window=4,
            entropy_threshold=0.3,
            init_threshold=2.0,
            static_threshold=True,
            uncertainty=False,
            weighted=False,
            control="argmax",
            label_rate=0.1,
        ),
        emp=EmpConfig(
            policy="threshold",
            keep_ratio=0.25,
            threshold=0.8,
            gamma1=0.5,
            gamma2=2.0,
            first_layer=True,
        ),
    )
    assert hash(config) == hash(config_lib.from_flags(values))  # Static under jit.
    flat = config_lib.as_flags(config)
    assert flat == {**FLAG_DEFAULTS, **values, "lr_boundaries": (0.5, 0.75)}
    assert config_lib.from_flags(flat) == config
    on_top = config_lib.from_flags({"eif_window": 7}, base=config)
    assert on_top.filter.window == 7 and on_top.filter.r_set == 0.2 and on_top.emp == config.emp


def test_emp_config_gives_the_policy_and_only_under_emp():
    assert EmpConfig(keep_ratio=0.25, gamma1=0.5).as_policy() == emp.TopK(0.25, 0.5, 1.0)
    threshold = EmpConfig(policy="threshold", threshold=0.8, gamma2=2.0)
    assert threshold.as_policy() == emp.Threshold(0.8, 0.0, 2.0)
    assert train_lib.emp_policy(TrainConfig(method="emp")) == emp.TopK(0.5)
    assert train_lib.emp_policy(TrainConfig(method="eif")) is None


def test_uses_emp_and_uses_eif_follow_the_method():
    flags = {
        m: (TrainConfig(method=m).uses_emp, TrainConfig(method=m).uses_eif)
        for m in config_lib.METHODS
    }
    assert flags == {
        "sgd": (False, False),
        "emp": (True, False),
        "eif": (False, True),
        "eif_emp": (True, True),
        **dict.fromkeys(config_lib.BUDGET_METHODS, (False, False)),
        **dict.fromkeys(config_lib.SELECTION_BASELINES, (False, False)),
    }
    # A selection baseline composes with EMP on request.
    assert TrainConfig(method="ohem", select_emp=True).uses_emp


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model="resnet9"), "--model='resnet9' is invalid: choose one of lenet, lenet_slim"),
        (dict(dataset="svhn"), "--dataset='svhn' is invalid: choose one of mnist"),
        (dict(method="smx"), "--method='smx' is invalid: choose one of sgd, emp, eif, eif_emp"),
        (dict(bits=7), "--bits=7 is invalid: choose one of 32, 16, 8, 6, 4"),
        (dict(epochs=1.0, steps=5), "--steps=5 is invalid: give --epochs or --steps, not both"),
        (dict(epochs=0.0), "--epochs=0.0 is invalid: must be a positive number"),
        (dict(epochs=float("inf")), "--epochs=inf is invalid: must be a positive number"),
        (dict(steps=-3), "--steps=-3 is invalid: must be a positive number"),
        (dict(batch_size=0), "--batch_size=0 is invalid: must be a positive number"),
        (dict(learning_rate=-0.1), "--learning_rate=-0.1 is invalid: must be a positive number"),
        (dict(eval_batch_size=0), "--eval_batch_size=0 is invalid: must be a positive number"),
        (dict(checkpoint_every_steps=0), "--checkpoint_every_steps=0 is invalid"),
        (dict(log_every_steps=0), "--log_every_steps=0 is invalid: must be a positive number"),
        (dict(momentum=1.0), "--momentum=1.0 is invalid: must lie in [0, 1)"),
        (dict(weight_decay=-1e-4), "--weight_decay=-0.0001 is invalid: must be >= 0"),
        (dict(lr_boundaries=(0.5, 1.0)), "--lr_boundaries=(0.5, 1.0) is invalid: fractions"),
        (dict(filter_model="resnet9"), "--filter_model='resnet9' is invalid: choose one of"),
        (dict(filter_learning_rate=0.0), "--filter_learning_rate=0.0 is invalid: must be > 0"),
        (dict(eif_probe_size=-1), "--eif_probe_size=-1 is invalid: must be >= 0"),
        (dict(eif_batch_size=0), "--eif_batch_size=0 is invalid: must be a positive number"),
        (dict(eif_random_probes=-1), "--eif_random_probes=-1 is invalid: must be >= 0"),
        (dict(select_emp=True), "--select_emp=True is invalid: it adds EMP to a selection"),
        (dict(sb_beta=0.0), "--sb_beta=0.0 is invalid: must be a positive number"),
        (dict(sb_history=63), "--sb_history=63 is invalid: must be at least the batch size, 64"),
        (dict(sb_staleness=0), "--sb_staleness=0 is invalid: must be a positive integer"),
        (dict(infobatch_prune=0.95), "--infobatch_prune=0.95 is invalid: must lie in [0, 0.9]"),
        (dict(infobatch_delta=1.5), "--infobatch_delta=1.5 is invalid: must lie in [0, 1]"),
        (dict(num_processes=0), "--num_processes=0 is invalid: must be a positive integer"),
        (dict(num_processes=2.0), "--num_processes=2.0 is invalid: must be a positive integer"),
        (dict(process_id=-1), "--process_id=-1 is invalid: must be an integer >= 0"),
        (
            dict(num_processes=2, process_id=2),
            "--process_id=2 is invalid: must lie in [0, --num_processes=2)",
        ),
        (dict(coordinator_address="localhost"), "--coordinator_address='localhost' is invalid"),
        # Valid settings, but this test's process joined no others.
        (dict(num_processes=2), "--num_processes=2 is invalid: this process is one of 1, not of 2"),
        (dict(process_id=1), "--process_id=1 is invalid: this process is process 0 of 1"),
        (
            dict(coordinator_address="10.0.0.1:8476"),
            "--coordinator_address='10.0.0.1:8476' is invalid: this process has joined no",
        ),
    ],
)
def test_bad_values_are_rejected_with_one_clear_message(kwargs, message):
    with pytest.raises(ValueError) as info:
        config_lib.resolve(TrainConfig(**kwargs))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(emp_policy="random"), "--emp_policy='random' is invalid: must be one of topk, "),
        (dict(emp_keep=0.0), "--emp_keep=0.0 is invalid: must lie in (0, 1]"),
        (dict(emp_keep=1.5), "--emp_keep=1.5 is invalid: must lie in (0, 1]"),
        (dict(emp_threshold=-1.0), "--emp_threshold=-1.0 is invalid: must be a finite number"),
        (dict(gamma1=-1.0), "--gamma1=-1.0 is invalid: must be a finite number >= 0"),
        (dict(gamma1=0.0, gamma2=0.0), "gamma1=0.0 and gamma2=0.0 must not both be 0"),
        (dict(r_set=1.0), "--r_set=1.0 is invalid: must lie in (0, 1)"),
        (dict(alpha1=0.5), "--alpha1=0.5 is invalid: must be a finite number >= 1"),
        (dict(alpha2=1.5), "--alpha2=1.5 is invalid: must lie in (0, 1]"),
        (dict(eif_window=0), "--eif_window=0 is invalid: must be a positive integer"),
        (dict(eif_label_rate=1.0), "--eif_label_rate=1.0 is invalid: must lie in (0, 1)"),
        (dict(entropy_threshold=-1.0), "--entropy_threshold=-1.0 is invalid: must lie in [0, ln 2"),
        (dict(init_threshold=0.0), "--init_threshold=0.0 is invalid: must be a finite number > 0"),
        (dict(eif_control="topk"), "--eif_control='topk' is invalid: must be one of quantile, "),
        (dict(lr_boundaries="0.5,x"), "--lr_boundaries='0.5,x' is invalid: comma-separated"),
        (dict(eif_windows=3), "unknown flags ['eif_windows']; the flags are model, dataset"),
    ],
)
def test_bad_flag_values_are_rejected_naming_the_flag(values, message):
    with pytest.raises(ValueError) as info:
        config_lib.from_flags(values)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: EmpConfig(policy="random"), "policy='random' must be one of topk, threshold"),
        (lambda: EmpConfig(keep_ratio=1.5), "keep_ratio=1.5 must lie in (0, 1]"),
        (lambda: EmpConfig(threshold=-1.0), "threshold=-1.0 must be a finite number >= 0"),
        (lambda: EmpConfig(keep_ratio=np.array([0.5])), "keep_ratio=array([0.5]) must lie"),
        (lambda: EmpConfig(first_layer="no"), "first_layer='no' must be True or False"),
    ],
)
def test_emp_config_names_its_own_field(make, message):
    with pytest.raises((ValueError, TypeError)) as info:
        make()
    assert str(info.value).startswith(message)


def test_every_flag_has_a_value_once_resolved():
    flat = config_lib.as_flags(config_lib.resolve(TrainConfig()))
    # Settings of other methods.
    unused = ["budget", "smd_skip", "sd_final_survival", "slu_beta", "slu_minimum"]
    single = ["coordinator_address"]  # One process: no coordinator.
    assert [k for k, v in flat.items() if v is None] == ["steps", "data_dir", *single, *unused]


@pytest.mark.parametrize(
    "address, valid",
    [
        ("10.0.0.1:8476", True),
        ("node-3.cluster.local:1", True),
        ("[::1]:65535", True),
        ("localhost", False),
        ("localhost:", False),
        (":8476", False),
        ("localhost:0", False),
        ("localhost:65536", False),
        ("localhost:http", False),
        ("::1:8476", False),  # IPv6 without brackets: where does the port begin?
        ("[::1:8476", False),
        ("[]:8476", False),
        ("local host:8476", False),
        ("http://10.0.0.1:8476", False),
    ],
)
def test_a_coordinator_address_is_host_colon_port(address, valid):
    config = TrainConfig(coordinator_address=address)
    if valid:
        config_lib.validate(config)  # validate() joins nothing: no connection is tried.
    else:
        with pytest.raises(ValueError, match=r"^--coordinator_address=.* is invalid: HOST:PORT"):
            config_lib.validate(config)


@pytest.mark.parametrize("name", ["eif_history", "eif_predict_ahead"])
@pytest.mark.parametrize(
    "given", [{"filter": FilterConfig(control="argmax")}, {"eif_batch_size": 32}]
)
def test_stream_engine_options_are_refused_off_it(name, given):
    config = TrainConfig(method="eif", **{name: True}, **given)
    with pytest.raises(ValueError, match=rf"^--{name}=True is invalid: needs the stream"):
        config_lib.resolve(config)
