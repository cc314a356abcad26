"""The run's settings as dataclasses: :class:`TrainConfig`, :class:`EmpConfig`, and the
method lists that say which settings belong to which methods (see the package doc)."""

from __future__ import annotations

import dataclasses
from typing import Any

from edgefilter.method import emp
from edgefilter.method.instance_filter import FilterConfig

# Schedule- and model-level baselines (issue 18): edgefilter.training.budget (smb, smd),
# edgefilter.models.stochastic_depth (sd), and e2train (see TrainConfig.uses_smd).
BUDGET_METHODS = ("smb", "smd", "sd", "e2train")
# Data-selection baselines on the selection interface (issue #18; edgefilter.select).
SELECTION_BASELINES = (
    "random",
    "oracle",
    "ohem",
    "selective_backprop",
    "selective_backprop_stale",
    "infobatch",
)
# Those whose kept count varies: packed into full batches at each block's end.
PACKING_BASELINES = ("selective_backprop", "selective_backprop_stale", "infobatch")
METHODS = ("sgd", "emp", "eif", "eif_emp", *SELECTION_BASELINES, *BUDGET_METHODS)
EIF_METHODS = ("eif", "eif_emp")  # The methods with an instance filter.
# Flag ownership (foreign_flags): --r_set also sizes random, oracle and ohem's choice,
# and --select_emp adds EMP (its flags) to any selection baseline.
FILTER_FLAG_METHODS = (*EIF_METHODS, "random", "oracle", "ohem")
EMP_METHODS = ("emp", "eif_emp", *SELECTION_BASELINES)
EMP_POLICIES = ("topk", "threshold")
BITS = (32, 16, 8, 6, 4)


def setting(
    default: Any, help: str, flag: str | None = None, methods: tuple[str, ...] | None = None
) -> Any:
    """A config field: its default, its flag's help, and the flag's name if not the field's.

    For a field holding a nested config (``TrainConfig.filter``), ``help`` is the label
    put before the help of each of the nested config's flags (``"EIF: ..."``).
    ``methods`` declares the methods the setting belongs to (None: every method); a
    nested config's fields inherit it. Given on the command line with another method,
    the flag is ignored with a warning (:func:`foreign_flags`).
    """
    metadata: dict[str, Any] = {"help": help}
    if flag is not None:
        metadata["flag"] = flag
    if methods is not None:
        metadata["methods"] = tuple(methods)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class EmpConfig:
    """Error map pruning's settings (PAPER.md Eq. 8-14); :meth:`as_policy` is the policy.

    Both policies' parameters are kept, so that switching ``policy`` needs no other
    setting; a bad value raises ``ValueError`` naming the field (through
    :class:`~edgefilter.method.emp.TopK` and :class:`~edgefilter.method.emp.Threshold`,
    which check their own parameters).
    """

    policy: str = setting("topk", f"one of {', '.join(EMP_POLICIES)}.", "emp_policy")
    keep_ratio: float = setting(
        0.5, "fraction of error channels the topk policy keeps.", "emp_keep"
    )
    threshold: float = setting(
        1.0, "the threshold policy keeps channels with S_j >= threshold * mean(S).", "emp_threshold"
    )
    gamma1: float = setting(emp.TopK.gamma1, "weight of ||W_j||_1 in the score S_j (Eq. 11).")
    gamma2: float = setting(emp.TopK.gamma2, "weight of ||delta_ij||_1 in S_j (Eq. 11).")
    first_layer: bool = setting(
        False,
        "prune the first conv layer's backward too (default: it stays dense).",
        "emp_first_layer",
    )

    def __post_init__(self) -> None:
        if self.policy not in EMP_POLICIES:
            raise ValueError(f"policy={self.policy!r} must be one of {', '.join(EMP_POLICIES)}")
        if not isinstance(self.first_layer, bool):
            raise TypeError(f"first_layer={self.first_layer!r} must be True or False")
        emp.TopK(self.keep_ratio, self.gamma1, self.gamma2)
        emp.Threshold(self.threshold, self.gamma1, self.gamma2)

    def as_policy(self) -> emp.Policy:
        """The pruning policy: ``TopK`` or ``Threshold`` with these parameters (Eq. 11)."""
        if self.policy == "topk":
            return emp.TopK(self.keep_ratio, self.gamma1, self.gamma2)
        return emp.Threshold(self.threshold, self.gamma1, self.gamma2)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """All settings of one run; ``None`` means "the paper's default" (see module doc)."""

    model: str = setting("lenet", "Main network: one of edgefilter.models.")
    dataset: str = setting(
        "fashion_mnist", "mnist, fashion_mnist, cifar10, cifar100, imagenet2012 or idx:/folder."
    )
    method: str = setting("sgd", f"One of: {', '.join(METHODS)}.")
    bits: int = setting(32, f"Training precision: {', '.join(map(str, BITS))}.")
    epochs: float | None = setting(None, "Epochs over the training set (default: the paper's).")
    steps: int | None = setting(None, "Training steps instead of --epochs.")
    batch_size: int | None = setting(None, "Mini-batch size m (default: the paper's).")
    learning_rate: float | None = setting(None, "Initial learning rate (default: the paper's).")
    momentum: float | None = setting(None, "SGD momentum (default: the paper's).")
    weight_decay: float | None = setting(None, "L2 weight decay (default: the paper's).")
    lr_boundaries: tuple[float, ...] | None = setting(
        None, "Fractions of training at which the learning rate is divided by 10."
    )
    seed: int = setting(0, "Seed of initialisation and stream order.")
    data_dir: str | None = setting(None, "tensorflow-datasets data directory.")
    eval_batch_size: int = setting(1000, "Evaluation batch size.")
    checkpoint_every_steps: int = setting(
        1000, "Checkpoint period in steps (also at every epoch end)."
    )
    log_every_steps: int = setting(50, "How often per-step metrics are flushed to metrics.jsonl.")
    block_chunks: int = setting(
        8,
        "Chunks per on-device block of the stream engine: one dispatch and one host sync "
        "per block; metrics, evaluation and checkpoints happen at block ends.",
    )
    xla_cpu: bool | None = setting(
        None, "XLA:CPU lowerings: default on when jax.default_backend() is cpu."
    )
    snapshots: int = setting(
        4,
        "Chunks, evenly spaced from the first to the last, saved with the selection's "
        "keep/drop decision on each instance to <workdir>/snapshots/ (the paper's Fig. 13; "
        "edgefilter.training.snapshots); 0: none.",
        methods=(*EIF_METHODS, *SELECTION_BASELINES),
    )
    data_parallel: int | None = setting(
        None,
        "Local devices each chunk is split over (a 1-D data mesh; parameters and state "
        "replicated): default all of them. --batch_size must divide over them.",
    )
    coordinator_address: str | None = setting(
        None,
        "Multi-process run (jax.distributed): HOST:PORT of process 0's coordinator, the "
        "same for every process. Giving it, --num_processes > 1 or --process_id > 0 joins "
        "the processes (those not given: JAX's detection from the cluster's environment); "
        "none of them: one process.",
    )
    num_processes: int | None = setting(
        None,
        "Multi-process run: how many processes, each with --data_parallel local devices "
        "(--batch_size must divide over all of them); see --coordinator_address.",
    )
    process_id: int | None = setting(
        None,
        "Multi-process run: this process's number in [0, --num_processes); process 0 "
        "writes the workdir. See --coordinator_address.",
    )
    emp: EmpConfig = setting(EmpConfig(), "EMP", methods=EMP_METHODS)
    filter: FilterConfig = setting(FilterConfig(), "EIF", methods=FILTER_FLAG_METHODS)
    filter_model: str | None = setting(
        None,
        "EIF: filter network (default: lenet_slim, resnet8 or resnet10 by dataset).",
        methods=EIF_METHODS,
    )
    filter_learning_rate: float = setting(0.1, "EIF: filter lr.", methods=EIF_METHODS)
    filter_lr_decay_steps: int | None = setting(
        None,
        "EIF: filter updates after which its lr halves (MNIST: 940; 0: never).",
        methods=EIF_METHODS,
    )
    eif_batch_size: int | None = setting(
        None,
        "EIF: instances per main-network step, packed from the filter's selection "
        "(default: round(r_set * batch_size), one main step per chunk as in the paper).",
        methods=EIF_METHODS,
    )
    eif_probe_size: int | None = setting(
        None,
        "EIF: uncertainty-sampled instances probed per main step (eif_batch_size/8).",
        methods=EIF_METHODS,
    )
    eif_random_probes: int = setting(
        1,
        "EIF: random predicted-L instances sampled per chunk (set T_l under quantile control).",
        methods=EIF_METHODS,
    )
    eif_history: bool = setting(
        False,
        "EIF: rank each chunk by the filter's margin together with each instance's last "
        "recorded main-network loss (select.with_loss_history; issue 19, not in the paper).",
        methods=EIF_METHODS,
    )
    eif_predict_ahead: bool = setting(
        False,
        "EIF: the filter predicts a whole block of --block_chunks chunks in one forward, "
        "from its parameters at the block's start (up to block_chunks - 1 updates stale; "
        "select.eif's predict_ahead; not in the paper).",
        methods=EIF_METHODS,
    )
    # --- smb, smd, sd, e2train (BUDGET_METHODS): None takes the source's default. ---
    budget: float | None = setting(
        None,
        "smb/smd: compute budget in (0, 1], a fraction of SGD's iterations: smb trains on "
        "the first budget of the stream (default 0.5), smd skips each mini-batch with "
        "probability 1 - budget (sets --smd_skip).",
        methods=("smb", "smd"),
    )
    smd_skip: float | None = setting(
        None,
        "smd/e2train: probability that a mini-batch is skipped (E2-Train: 0.5).",
        methods=("smd", "e2train"),
    )
    sd_final_survival: float | None = setting(
        None,
        "sd: survival probability p_L of the last residual block (Huang et al.: 0.5).",
        methods=("sd",),
    )
    slu_beta: float | None = setting(
        None,
        "e2train: weight of SLU's computational-cost term (E2-Train's code: 1e-5).",
        methods=("e2train",),
    )
    slu_minimum: float | None = setting(
        None,
        "e2train: executed percentage of gated blocks below which the cost term rewards "
        "executing (E2-Train's code: 100, i.e. always).",
        methods=("e2train",),
    )
    # Data-selection baselines (issue #18; edgefilter.select), the sources' defaults.
    select_emp: bool = setting(
        False,
        "random/oracle/ohem/selective_backprop*/infobatch: with EMP (--emp_* settings).",
        methods=SELECTION_BASELINES,
    )
    sb_beta: float = setting(
        3.0,
        "selective_backprop: keep probability CDF(loss)^beta (Jiang et al. 2019: 3).",
        methods=("selective_backprop", "selective_backprop_stale"),
    )
    sb_history: int = setting(
        1024,
        "selective_backprop: recent losses the CDF is taken over (Jiang et al.: 1024).",
        methods=("selective_backprop", "selective_backprop_stale"),
    )
    sb_staleness: int = setting(
        3,
        "selective_backprop_stale: epochs a forwarded loss is reused (Jiang et al.: 3).",
        methods=("selective_backprop_stale",),
    )
    infobatch_prune: float = setting(
        0.5,
        "infobatch: fraction of the below-mean-loss instances pruned (Qin et al. 2024).",
        methods=("infobatch",),
    )
    infobatch_delta: float = setting(
        0.875,
        "infobatch: prune in the first delta of the epochs, then train on everything.",
        methods=("infobatch",),
    )

    @property
    def uses_emp(self) -> bool:
        return self.method in ("emp", "eif_emp") or self.select_emp

    @property
    def uses_eif(self) -> bool:
        return self.method in EIF_METHODS

    @property
    def uses_smd(self) -> bool:
        """Whether whole mini-batches are skipped (edgefilter.training.budget)."""
        return self.method in ("smd", "e2train")

    @property
    def uses_sd(self) -> bool:
        """Whether residual blocks are bypassed (edgefilter.models.stochastic_depth)."""
        return self.method == "sd"

    @property
    def uses_host_queue(self) -> bool:
        """Whether EIF runs on the host-queue runner (``training.eif_runner``), not the
        stream engine: the argmax rule, or a main batch other than ``round(r_set * m)``.
        Needs a resolved config (``eif_batch_size`` filled in)."""
        one_step_per_chunk = self.eif_batch_size == max(
            1, round(self.filter.r_set * self.batch_size)
        )
        return self.uses_eif and (self.filter.control != "quantile" or not one_step_per_chunk)
