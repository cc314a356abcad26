"""Resolution: a config's unset settings filled with the paper's values for its dataset
family (:mod:`.paper`), after validation (:mod:`.checks`) and before the checks that
need the filled values."""

from __future__ import annotations

import dataclasses

from edgefilter import backends
from edgefilter.training import parallel
from edgefilter.training.config.checks import (
    check_data_parallel,
    check_joined,
    check_resolved,
    validate,
)
from edgefilter.training.config.paper import FILTER_MODELS, PAPER, dataset_family
from edgefilter.training.config.schema import TrainConfig

__all__ = ["resolve"]


def resolve(config: TrainConfig) -> TrainConfig:
    """Validates ``config`` and fills every ``None`` with the paper's default."""
    validate(config)
    family = dataset_family(config.dataset)
    paper = dict(PAPER[family])
    if config.epochs is not None or config.steps is not None:
        paper.pop("epochs", None)
        paper.pop("steps", None)
    paper["filter_model"] = FILTER_MODELS[family]
    # The paper's MNIST filter: lr 0.1 decayed to 0.05 after 0.94k iterations.
    paper["filter_lr_decay_steps"] = 940 if family == "mnist" else 0
    filled = {k: v for k, v in paper.items() if getattr(config, k) is None}
    filled.update(_eif_sizes(config, config.batch_size or paper["batch_size"]))
    if config.filter.label_rate is None:  # T_l aims at labelling R_set of the stream H.
        filled["filter"] = dataclasses.replace(config.filter, label_rate=config.filter.r_set)
    filled["xla_cpu"] = backends.use_xla_cpu(config.xla_cpu)
    if config.data_parallel is None:
        filled["data_parallel"] = parallel.default_devices()
    filled.update(_budget_defaults(config))
    index, count, joined = parallel.processes()  # 0, 1, False unless this process joined.
    if config.num_processes is None:
        filled["num_processes"] = count
    if config.process_id is None:
        filled["process_id"] = index
    resolved = dataclasses.replace(config, **filled)
    check_resolved(resolved)
    check_joined(resolved, index, count, joined)
    check_data_parallel(resolved)
    return resolved


def _budget_defaults(config: TrainConfig) -> dict[str, float]:
    """The budget methods' settings: SMB's budget, SMD's skip probability, SD's p_L."""
    filled = {}
    if config.method == "smb" and config.budget is None:
        filled["budget"] = 0.5  # The paper's SMB rows (PAPER.md): 50% of SGD's iterations.
    if config.uses_smd and config.smd_skip is None:
        # E2-Train's released code skips a mini-batch when U(0, 1) > 0.5.
        filled["smd_skip"] = 0.5 if config.budget is None else 1.0 - config.budget
    if config.uses_sd and config.sd_final_survival is None:
        filled["sd_final_survival"] = 0.5  # Huang et al. 2016, Sec. 4: p_L = 0.5.
    if config.method == "e2train":  # E2-Train's main_all.py: --beta 1e-5, --minimum 100.
        filled["slu_beta"] = 1e-5 if config.slu_beta is None else config.slu_beta
        filled["slu_minimum"] = 100.0 if config.slu_minimum is None else config.slu_minimum
    return filled


def _eif_sizes(config: TrainConfig, batch_size: int) -> dict[str, int]:
    """The packed main batch and the probes per main step, unless given."""
    # The paper's main network takes one step per stream mini-batch, on the ~R_set * m
    # instances it keeps; packed steps of that size take as many steps as SGD.
    eif_batch = config.eif_batch_size or max(1, round(config.filter.r_set * batch_size))
    sizes = {"eif_batch_size": eif_batch}
    if not config.filter.uncertainty and config.eif_random_probes == 0:
        sizes["eif_probe_size"] = 0  # Nothing is sampled, so nothing is probed.
    elif config.eif_probe_size is None:
        sizes["eif_probe_size"] = max(1, eif_batch // 8)
    return sizes
