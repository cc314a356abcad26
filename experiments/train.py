r"""Command-line entry point: train one model with one method on one dataset.

  python -m experiments.train --model=lenet --dataset=fashion_mnist --method=sgd \
      --workdir=/tmp/lenet_sgd

Unset hyper-parameters take the paper's settings for the model and dataset (see
``edgefilter.training.config``). Re-running with the same ``--workdir`` resumes the run from its
latest checkpoint. A bad flag value or a dataset that cannot be had ends with one line
on stderr naming the problem and exit status 2, before anything is written.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags, logging

from edgefilter import data as data_lib
from edgefilter.training import config as config_lib
from edgefilter.training import loop
from experiments.cli import fail, parse_flags

_DEFAULTS = config_lib.TrainConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string("model", _DEFAULTS.model, "Main network: one of edgefilter.models.")
flags.DEFINE_string(
    "dataset",
    _DEFAULTS.dataset,
    "mnist, fashion_mnist, cifar10, cifar100, imagenet2012 or idx:/folder.",
)
flags.DEFINE_string("method", _DEFAULTS.method, "One of: " + ", ".join(config_lib.METHODS))
flags.DEFINE_integer("bits", _DEFAULTS.bits, "Training precision: 32, 16, 8, 6 or 4.")
flags.DEFINE_float("epochs", None, "Epochs over the training set (default: the paper's).")
flags.DEFINE_integer("steps", None, "Training steps instead of --epochs.")
flags.DEFINE_integer("batch_size", None, "Mini-batch size m (default: the paper's).")
flags.DEFINE_float("learning_rate", None, "Initial learning rate (default: the paper's).")
flags.DEFINE_float("momentum", None, "SGD momentum (default: the paper's).")
flags.DEFINE_float("weight_decay", None, "L2 weight decay (default: the paper's).")
flags.DEFINE_list(
    "lr_boundaries", None, "Fractions of training at which the learning rate is divided by 10."
)
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of initialisation and stream order.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data directory.")
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, summary).")
flags.DEFINE_integer("eval_batch_size", _DEFAULTS.eval_batch_size, "Evaluation batch size.")
flags.DEFINE_integer(
    "checkpoint_every_steps",
    _DEFAULTS.checkpoint_every_steps,
    "Checkpoint period in steps (also at every epoch end).",
)
flags.DEFINE_integer(
    "log_every_steps",
    _DEFAULTS.log_every_steps,
    "How often per-step metrics are flushed to metrics.jsonl.",
)
flags.DEFINE_string("emp_policy", _DEFAULTS.emp_policy, "Error map pruning: topk or threshold.")
flags.DEFINE_float("emp_keep", _DEFAULTS.emp_keep, "TopK: fraction of error channels kept.")
flags.DEFINE_float(
    "emp_threshold",
    _DEFAULTS.emp_threshold,
    "Threshold: keep channels with S_j >= threshold * mean(S).",
)
flags.DEFINE_bool(
    "emp_first_layer",
    False,
    "EMP: prune the first conv layer's backward too (default: it stays dense).",
)
flags.DEFINE_float("gamma1", _DEFAULTS.gamma1, "Weight of ||W_j||_1 in the score (Eq. 11).")
flags.DEFINE_float("gamma2", _DEFAULTS.gamma2, "Weight of ||delta_ij||_1 (Eq. 11).")
flags.DEFINE_float("r_set", _DEFAULTS.r_set, "EIF: target fraction of the stream trained on.")
flags.DEFINE_float("alpha1", _DEFAULTS.alpha1, "EIF: T_l multiplier when R_TH >= r_set (Eq. 3).")
flags.DEFINE_float("alpha2", _DEFAULTS.alpha2, "EIF: T_l multiplier when R_TH < r_set (Eq. 3).")
flags.DEFINE_integer("eif_window", _DEFAULTS.eif_window, "EIF: chunks n per R_TH window (Eq. 2).")
flags.DEFINE_float(
    "entropy_threshold",
    _DEFAULTS.entropy_threshold,
    "EIF: entropy_T in nats for uncertainty sampling (Eq. 5).",
)
flags.DEFINE_float("init_threshold", _DEFAULTS.init_threshold, "EIF: initial loss threshold T_l.")
flags.DEFINE_string(
    "filter_model",
    None,
    "EIF: filter network (default: lenet_slim, resnet8 or resnet10 by dataset).",
)
flags.DEFINE_float("filter_learning_rate", _DEFAULTS.filter_learning_rate, "EIF: filter lr.")
flags.DEFINE_integer(
    "filter_lr_decay_steps",
    None,
    "EIF: filter updates after which its lr halves (MNIST: 940; 0: never).",
)
flags.DEFINE_integer(
    "eif_batch_size",
    None,
    "EIF: instances per main-network step, packed from the filter's selection (default: "
    "round(r_set * batch_size), one main step per chunk as in the paper).",
)
flags.DEFINE_integer(
    "eif_probe_size",
    None,
    "EIF: uncertainty-sampled instances probed per main step (eif_batch_size/8).",
)
flags.DEFINE_integer(
    "eif_random_probes",
    _DEFAULTS.eif_random_probes,
    "EIF: random predicted-L instances sampled per chunk (set T_l under quantile control).",
)
flags.DEFINE_string(
    "eif_control",
    _DEFAULTS.eif_control,
    "EIF: 'quantile' (holds the kept ratio) or 'argmax' (the paper's rule).",
)
flags.DEFINE_float(
    "eif_label_rate",
    None,
    "EIF, quantile control: fraction of the stream T_l aims to label H (default: r_set).",
)
flags.DEFINE_bool("eif_static_threshold", False, "EIF ablation: keep T_l fixed.")
flags.DEFINE_bool("eif_uncertainty", True, "EIF: uncertainty sampling (False: ablation).")
flags.DEFINE_bool("eif_weighted", True, "EIF: weighted filter loss (False: ablation).")
flags.DEFINE_bool(
    "xla_cpu",
    None,
    "XLA:CPU lowerings and compile options (edgefilter.backends; default: on when JAX's "
    "backend is the CPU).",
)
flags.DEFINE_bool("progress", None, "Show the progress display (default: on a terminal).")


def config_from_flags() -> config_lib.TrainConfig:
    """Builds a TrainConfig from every flag that is one of its fields."""
    values = {}
    for field in dataclasses.fields(config_lib.TrainConfig):
        value = FLAGS[field.name].value
        if field.name == "lr_boundaries" and value is not None:
            try:
                value = tuple(float(v) for v in value)
            except ValueError:
                raise ValueError(
                    f"--lr_boundaries={','.join(value)!r} is invalid: "
                    "comma-separated fractions in (0, 1)"
                ) from None
        values[field.name] = value
    return config_lib.TrainConfig(**values)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]!r}; all options are --flags")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    if not FLAGS.workdir:
        fail("--workdir is required: the directory for checkpoints, metrics and summary.json")
    try:  # Everything that can be wrong with the input fails here, before any output.
        config = config_lib.resolve(config_from_flags())
        loop.check_resumable(config, FLAGS.workdir)
        dataset = data_lib.load(config.dataset, config.data_dir)
    except (ValueError, data_lib.DataUnavailableError) as e:
        fail(str(e))
    summary = loop.train_and_evaluate(
        config, FLAGS.workdir, dataset=dataset, show_progress=FLAGS.progress
    )
    print(
        f"{config.method} {config.model} on {config.dataset}: test accuracy "
        f"{summary['test_accuracy']:.4f}, {summary['instances_trained']} of "
        f"{summary['instances_streamed']} instances trained, "
        f"{summary['wall_time_s']:.1f} s -> {FLAGS.workdir}/summary.json"
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
