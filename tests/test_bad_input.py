"""Bad input ends with one line and exit status 2 before anything is written (issue 22).

Every case runs ``experiments.train``'s ``main`` in this process, on the flags
``cli.parse_flags`` parsed (what ``app.run`` does; ``tests/test_experiments_train.py``
runs the real command once): a process per case would cost seconds of imports each.
The runs use the tiny IDX folder of ``conftest.py``, so the few cases that get as far
as the data load it in milliseconds.
"""

import errno
import os

import numpy as np
import pytest
from absl import flags

from edgefilter import data as data_lib
from edgefilter.training import config as config_lib
from edgefilter.training import eif_runner, loop, preflight
from edgefilter.training import stream as stream_lib
from experiments import cli, compare, train
from tests.conftest import learnable_images, write_idx


def _refused(capsys, main, argv, workdir):
    """Runs ``main`` on ``argv``; asserts exit 2, one line, no traceback, no workdir."""
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as exit_info:
        main(cli.parse_flags(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, (argv, err)
    assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    assert "Traceback" not in err
    assert not os.path.exists(workdir), argv
    return err


# Values no flag of its kind accepts: they do not parse, or are not finite.
_BY_KIND = {
    float: ["nan", "inf", "-inf", "abc"],
    int: ["abc", "1.5"],
    bool: ["maybe"],
    tuple: ["abc", "nan", "0.5,inf"],
    str: [],  # Strings: the flags with a fixed set of choices are in _RANGES.
}
# Values out of each flag's range, and the cases issue 22 lists.
_RANGES = {
    "model": ["resnet9", "vgg16"],  # vgg16 pools the 28x28 images to 0x0.
    "dataset": ["svhn", "idx:/no/such/folder"],
    "method": ["no_such_method"],
    "bits": ["7", "0"],
    "epochs": ["0", "-1", "1e-9"],  # 1e-9 epochs of 320 images: no instance at all.
    "steps": ["0", "-3"],
    "batch_size": ["0", "-64"],
    "learning_rate": ["0", "-1"],
    "momentum": ["1", "-0.5"],
    "weight_decay": ["-1e-4"],
    "lr_boundaries": ["0.75,0.5", "0.5,0.5", "0.5,1.5", "0"],
    "seed": ["-1", "4294967296"],
    "eval_batch_size": ["0"],
    "checkpoint_every_steps": ["0"],
    "log_every_steps": ["-1"],
    "block_chunks": ["0"],
    "snapshots": ["-1"],
    "data_parallel": ["0", "9999"],  # 9999: more than the local devices.
    # Refused before any connection is tried (a valid address would be waited on).
    "coordinator_address": ["localhost", ":8476", "h:0", "h:65536", "h:port", "::1:8476"],
    "num_processes": ["0", "-2"],
    "process_id": ["-1"],
    "emp_policy": ["random"],
    "emp_keep": ["0", "1.5"],
    "emp_threshold": ["-1"],
    "gamma1": ["-1"],
    "gamma2": ["-0.5"],
    "r_set": ["0", "1", "-0.3"],
    "alpha1": ["0.9"],
    "alpha2": ["0", "1.1"],
    "eif_window": ["0"],
    "entropy_threshold": ["-0.1", "0.7"],  # Above ln 2 nothing is ever sampled.
    "init_threshold": ["0"],
    "eif_control": ["top"],
    "eif_label_rate": ["0", "1"],
    "filter_model": ["resnet9"],
    "filter_learning_rate": ["0", "-0.1"],
    "filter_lr_decay_steps": ["-1"],
    "eif_batch_size": ["0"],
    "eif_probe_size": ["-1", "1000"],  # 1000: more than a chunk of 64 can probe.
    "eif_random_probes": ["-1"],
}
_VALID_WHATEVER = {"data_dir"}  # Any folder name; the IDX dataset ignores it.
_CASES = [
    (flag.name, value)
    for flag in config_lib.FLAGS
    for value in _BY_KIND[flag.kind] + _RANGES.get(flag.name, [])
]


def test_every_flag_has_invalid_values_in_the_table():
    names = {flag.name for flag in config_lib.FLAGS}
    assert {name for name, _ in _CASES} | _VALID_WHATEVER == names


def test_invalid_values_of_every_flag_exit_2_with_one_line_and_no_workdir(
    tmp_path, idx_folder, capsys, fresh_flags
):
    workdir = tmp_path / "run"
    base = [
        "experiments.train",
        f"--dataset=idx:{idx_folder}",
        f"--workdir={workdir}",
        "--method=eif_emp",  # Every flag is used: none is merely ignored.
    ]
    for name, value in _CASES:
        err = _refused(capsys, train.main, [*base, f"--{name}={value}"], workdir)
        assert f"--{name}" in err or value.removeprefix("idx:") in err, err


@pytest.mark.parametrize(
    "given, message",
    [
        (["--num_processes=2", "--process_id=2"], "--process_id=2 is invalid: must lie in [0, "),
        (["--coordinator_address=10.0.0.1", "--num_processes=2"], "--coordinator_address="),
    ],
)
def test_multi_process_settings_are_refused_before_any_connection(
    tmp_path, idx_folder, capsys, fresh_flags, given, message
):
    workdir = tmp_path / "run"
    argv = ["experiments.train", f"--dataset=idx:{idx_folder}", f"--workdir={workdir}", *given]
    err = _refused(capsys, train.main, argv, workdir)
    assert err.startswith(f"error: {message}"), err


@pytest.mark.parametrize(
    "given, message",
    [
        ("--num_processes=2", "--num_processes=2 is invalid: this process is one of 1, not of 2"),
        ("--coordinator_address=10.0.0.1:8476", "--coordinator_address='10.0.0.1:8476' is inv"),
    ],
)
def test_compare_refuses_to_run_on_several_processes(
    tmp_path, idx_folder, capsys, fresh_flags, given, message
):
    # It does not join them (experiments.train does): it says so rather than run alone.
    workdir = tmp_path / "table"
    argv = ["experiments.compare", f"--dataset=idx:{idx_folder}", f"--workdir={workdir}", given]
    err = _refused(capsys, compare.main, argv, workdir)
    assert err.startswith(f"error: {message}") and "multihost.join" in err, err


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_a_workdir_that_cannot_be_a_folder_is_refused(
    tmp_path, idx_folder, capsys, fresh_flags, where
):
    (tmp_path / "file").write_text("not a folder")
    workdir = tmp_path / "file" if where == "file" else tmp_path / "file" / "run"
    argv = ["experiments.train", f"--dataset=idx:{idx_folder}", f"--workdir={workdir}"]
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as exit_info:
        train.main(cli.parse_flags(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert f"--workdir='{workdir}' is invalid" in err and "is a file" in err
    assert (tmp_path / "file").read_text() == "not a folder"


def test_an_unwritable_workdir_is_refused(tmp_path, monkeypatch):
    # Tests run as root, whom file modes do not stop: os.access is what is consulted.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match="is not writable"):
        preflight.check_workdir(str(tmp_path / "run"))


def test_flags_of_a_method_not_selected_are_ignored_with_one_warning(capsys, fresh_flags):
    assert config_lib.foreign_flags(["sgd"], ["r_set", "epochs", "emp_keep"]) == [
        "r_set",
        "emp_keep",
    ]
    assert config_lib.foreign_flags(["sgd", "eif"], ["r_set", "emp_keep"]) == ["emp_keep"]
    cli.parse_flags(["experiments.train", "--method=sgd", "--r_set=0.5", "--eif_window=4"])
    cli.warn_foreign_flags(["sgd"])
    assert capsys.readouterr().err == (
        "warning: --r_set, --eif_window ignored: not used by --method=sgd\n"
    )


# --- Data faults: IDX folders ---------------------------------------------------------------


def _idx(folder, train_labels=None, test_labels=None, size=28, n_train=40, n_test=20):
    """An IDX folder of learnable images, with the given labels where given."""
    images, labels = learnable_images(n_train + n_test, 0)
    if size != 28:
        images = images[:, :size, :size]
    train_labels = labels[:n_train] if train_labels is None else np.asarray(train_labels)
    test_labels = labels[n_train:] if test_labels is None else np.asarray(test_labels)
    folder.mkdir()
    for split, x, y in (
        ("train", images[: len(train_labels)], train_labels),
        ("t10k", images[n_train : n_train + len(test_labels)], test_labels),
    ):
        write_idx(str(folder / f"{split}-images-idx3-ubyte.gz"), x[..., 0])
        write_idx(str(folder / f"{split}-labels-idx1-ubyte.gz"), y)
    return str(folder)


def _labels(n, stray=None, at=0):
    labels = np.arange(n) % 10
    if stray is not None:
        labels[at] = stray
    return labels


@pytest.mark.parametrize(
    "fault, message",
    [
        (dict(train_labels=_labels(40, stray=255)), "label 255 implies 256 classes"),
        (dict(test_labels=_labels(20, stray=200)), "label 200 implies 201 classes"),
        (dict(train_labels=_labels(0)), "the train split (train-labels-idx1-ubyte) is empty"),
        (dict(test_labels=_labels(0)), "the test split (t10k-labels-idx1-ubyte) is empty"),
        (dict(size=4), "--model='lenet' is invalid for 4x4x1 images"),
    ],
)
def test_a_data_fault_is_refused_with_one_line(tmp_path, capsys, fresh_flags, fault, message):
    folder = _idx(tmp_path / "idx", **fault)
    workdir = tmp_path / "run"
    argv = ["experiments.train", f"--dataset=idx:{folder}", f"--workdir={workdir}"]
    err = _refused(capsys, train.main, argv, workdir)
    assert message in err, err


def test_idx_num_classes_is_the_largest_label_plus_one_with_every_class_present(tmp_path):
    folder = _idx(tmp_path / "idx", train_labels=np.arange(40) % 7, test_labels=np.arange(20) % 7)
    assert data_lib.load(f"idx:{folder}").info.num_classes == 7


def test_test_labels_never_seen_in_training_give_a_warning(tmp_path, caplog):
    train_labels = np.arange(40) % 9  # Class 9 only in the test split.
    folder = _idx(tmp_path / "idx", train_labels=train_labels, test_labels=np.arange(20) % 10)
    dataset = data_lib.load(f"idx:{folder}")
    config = config_lib.resolve(config_lib.TrainConfig(dataset=f"idx:{folder}"))
    (warning,) = preflight.check_run(config, dataset)
    assert warning.startswith("test labels [9] never occur in the training split: 2 of 20")


def test_a_named_dataset_with_a_label_beyond_its_classes_is_refused():
    info = data_lib.DatasetInfo("mnist", 10, (28, 28, 1), (0.1,), (0.3,))
    images, labels = learnable_images(8, 0)
    labels[3] = 255
    dataset = data_lib.Dataset(info, images, labels, images, labels % 10)
    with pytest.raises(
        data_lib.DataUnavailableError, match=r"train split has label 255 .*\[0, 10\)"
    ):
        data_lib.check_labels(dataset, "mnist")


# --- The probe size -------------------------------------------------------------------------


def test_more_probe_slots_than_a_packed_batch_are_padded_within_the_data(tiny_dataset):
    """The host-queue runner (a main batch other than round(r_set * m)) fills 40 probe
    slots around a batch of 5: its padding indexed past the batch (a shorter probe array
    than the step was built for), and the step crashed. The step is replaced by a
    recorder: what is checked is the host's packing of its arguments."""
    config = config_lib.resolve(
        config_lib.TrainConfig(
            dataset="fashion_mnist",
            method="eif",
            batch_size=32,
            eif_batch_size=5,
            eif_probe_size=40,
            steps=2,
        )
    )
    runner = eif_runner.EifRunner(config, tiny_dataset.info, None, tiny_dataset, None)
    seen = {}

    def step(main, fstate, images, labels, weights, probe_images, probe_labels, mask, random, root):
        seen.update(probe_labels=probe_labels, mask=mask, random=random, weights=weights)
        return main, fstate, {}

    runner.step = step
    queue = lambda n, items: stream_lib.Queue.empty(n).push(np.asarray(items))[0]  # noqa: E731
    state = {
        "state": None,
        "filter": None,
        "trained": np.asarray(0, np.int64),
        "train_queue": queue(37, [3, 1, 4, 1, 5, 9]),
        "probe_queue": queue(160, [20, 21]),
        "random_queue": queue(160, [30]),
    }
    state, _ = runner._train(state, 5)
    assert seen["probe_labels"].shape == (40,) and seen["mask"].shape == (40,)
    np.testing.assert_array_equal(seen["mask"], np.arange(40) < 3)  # 1 random + 2 uncertain.
    np.testing.assert_array_equal(seen["random"], np.arange(40) < 1)
    np.testing.assert_array_equal(
        seen["probe_labels"][3:], tiny_dataset.train_labels[np.resize([3, 1, 4, 1, 5], 37)]
    )
    assert int(state["trained"]) == 5 and len(state["train_queue"]) == 1


# --- compare, and a full disk ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variants="], "--variants is empty"),
        (["--variants=sgd,eif,sgd"], "sgd given more than once"),
        (["--variants=sgd,eif", "--eif_probe_size=1000"], "--eif_probe_size=1000 is invalid"),
    ],
)
def test_compare_checks_every_variant_before_the_first_trains(
    tmp_path, idx_folder, capsys, fresh_flags, args, message
):
    workdir = tmp_path / "table"
    argv = ["experiments.compare", f"--dataset=idx:{idx_folder}", f"--workdir={workdir}", *args]
    err = _refused(capsys, compare.main, argv, workdir)
    assert message in err, err


def test_compare_refuses_a_variant_folder_holding_other_settings(
    tmp_path, idx_folder, capsys, fresh_flags
):
    workdir = tmp_path / "table"
    (workdir / "eif").mkdir(parents=True)
    (workdir / "eif" / "config.json").write_text('{"method": "eif", "seed": 7}')
    argv = [
        "experiments.compare",
        f"--dataset=idx:{idx_folder}",
        f"--workdir={workdir}",
        "--variants=sgd,eif",
    ]
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as exit_info:
        compare.main(cli.parse_flags(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "holds a run with other settings" in err
    assert sorted(os.listdir(workdir)) == ["eif"]  # sgd was not trained first.


def test_a_full_disk_ends_with_one_line_naming_the_path(
    tmp_path, idx_folder, capsys, fresh_flags, monkeypatch
):
    path = str(tmp_path / "run" / "metrics.jsonl")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(loop, "train_and_evaluate", full)
    argv = ["experiments.train", f"--dataset=idx:{idx_folder}", f"--workdir={tmp_path / 'run'}"]
    with pytest.raises(SystemExit) as exit_info:
        train.main(cli.parse_flags(argv))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"error: cannot write {path}: the disk is full\n"
