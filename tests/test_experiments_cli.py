"""experiments.cli: one line naming the bad value and exit status 2, for every command.

Each command runs as ``python -m <module> <flags>`` does, forked from one server process
that has imported JAX, absl and edgefilter once (``conftest.command_server``).
``tests/test_experiments_train.py`` runs ``experiments.train`` as a real ``python -m``
process.
"""

import pytest
from absl import flags

from experiments import cli
from tests.conftest import command_server

flags.DEFINE_integer("cli_test_count", 1, "A flag for this test only.", lower_bound=1)
flags.DEFINE_list("cli_test_keeps", ["0.5"], "A list flag for this test only.")
flags.DEFINE_list("cli_test_names", ["a"], "A list flag for this test only.")
flags.DEFINE_string("cli_test_output", None, "A file flag for this test only.")
cli.check_flag("cli_test_keeps", cli.finite_in(0.0, 1.0), "ratios in (0, 1]")
cli.check_flag("cli_test_names", cli.distinct_choices(("a", "b")), "a, b, once each")
cli.check_flag("cli_test_output", cli.writable_file, "a file path in a writable folder")


@pytest.fixture(scope="module")
def run_command():
    """``run_command(module, *argv) -> (exit status, stderr)``, as ``python -m`` would."""
    with command_server() as run:
        yield run


def test_fail_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.fail("--x=3 is invalid: must be even")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --x=3 is invalid: must be even\n"


def test_a_flag_out_of_bounds_exits_2_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_flags(["prog", "--cli_test_count=0"])
    assert exit_info.value.code == 2
    assert "--cli_test_count=0" in capsys.readouterr().err
    assert cli.parse_flags(["prog", "--cli_test_count=3", "rest"]) == ["prog", "rest"]
    assert flags.FLAGS.cli_test_count == 3


@pytest.mark.parametrize(
    "flag, allowed",
    [
        ("--cli_test_keeps=0.5,nan", "ratios in (0, 1]"),
        ("--cli_test_keeps=1.5", "ratios in (0, 1]"),
        ("--cli_test_keeps=x", "ratios in (0, 1]"),
        ("--cli_test_names=", "a, b, once each"),
        ("--cli_test_names=a,a", "a, b, once each"),
        ("--cli_test_names=c", "a, b, once each"),
        ("--cli_test_output=/", "a file path in a writable folder"),
        ("--cli_test_output=/proc/version/x.json", "a file path in a writable folder"),
    ],
)
def test_a_checked_flag_exits_2_naming_the_flag_and_what_is_allowed(capsys, flag, allowed):
    """The benchmarks' own flags are checked so (cli.check_flag), as they are parsed."""
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_flags(["prog", flag])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag.split("=")[0] in err and f"allowed: {allowed}" in err
    flags.FLAGS.unparse_flags()


def test_checked_flags_take_valid_values(tmp_path):
    out = str(tmp_path / "new" / "out.json")
    argv = ["prog", "--cli_test_keeps=0.25,1", "--cli_test_names=b,a", f"--cli_test_output={out}"]
    cli.parse_flags(argv)
    assert flags.FLAGS.cli_test_keeps == ["0.25", "1"] and flags.FLAGS.cli_test_output == out
    flags.FLAGS.unparse_flags()


@pytest.mark.parametrize(
    "module, flag",
    [
        ("benchmarks.engine_block", "--rounds=0"),
        ("benchmarks.engine_block", "--methods=sgd"),
        ("benchmarks.engine_block", "--model=resnet9"),
        ("benchmarks.engine_block", "--block_chunks=0"),
        ("benchmarks.engine_block", "--r_set=1.5"),
        ("benchmarks.filter_cost", "--calls=0"),
        ("benchmarks.methods", "--variants=sgd,nonesuch"),
        ("benchmarks.emp_step", "--repeats=0"),
        ("benchmarks.methods", "--repeats=0"),
        ("benchmarks.methods", "--streams=resnet20_cifar_shaped,mnist"),
        ("benchmarks.lenet_throughput", "--threads=-1"),
        ("experiments.compare", "--workdir=/nonexistent/never --bits=7"),
        ("experiments.compare", "--workdir=/nonexistent/never --config=configs/x.py:sgd"),
        ("experiments.baselines", "--workdir=/nonexistent/never --methods=sgd,no_such_method"),
    ],
)
def test_commands_exit_2_on_a_bad_flag(run_command, module, flag):
    # Parsing fails first, so none of them starts its minutes of work.
    status, err = run_command(module, *flag.split())
    assert status == 2, err
    assert flag.split()[-1].split("=")[0] in err
    assert "Traceback" not in err
