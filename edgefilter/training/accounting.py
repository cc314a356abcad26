"""The ``compute`` block of summary.json: what a run cost, against SGD on the same stream.

Counted analytically (multiply-accumulates of conv and dense layers, the convention of
PAPER.md and :mod:`edgefilter.flops`), from what the run actually executed:

* ``main_forward`` / ``main_backward``: the main network's training steps, counted for
  every slot of every executed batch (a zero-weight padding slot is computed, so it is
  counted); with EMP the backward of each conv layer is scaled by its kept fraction.
* ``emp_selection``: EMP's channel scoring and top-k (counted at full precision
  whatever ``--bits``: additions, not multiplies, and a conservative count).
* ``filter_inference``: the filter's forward on every streamed chunk slot.
* ``filter_training``: the filter's forward and backward on its training instances.
* ``uncertainty_forward``: the main network's forward on the uncertainty-sampled
  instances (Eq. 4-5), which are probed but not trained on.
* ``selection_forward``: the main network's forward passes a data-selection baseline
  runs to choose what to train on (oracle, OHEM, Selective-Backprop: every chunk slot
  it forwarded, as its selector's state records).

Every method's breakdown has all these keys, zero where unused.

``sgd_same_stream`` is standard SGD training every streamed instance once, in full
precision (for SMB, every instance of the full stream it is a budget of: the run it is
compared against, :mod:`edgefilter.training.budget`);
``reduction = 1 - total / sgd_same_stream``. With ``--bits`` below 32 the unit is
bit-operations (BOP, in 32x32-bit MAC equivalents): a MAC of two b-bit operands counts
``b * b / 32**2`` (the filter runs at the same bits as the main network).

E2-Train's SLU gates are counted as layers of the main network (``run`` below); the
blocks they gate off per instance are computed, so counted. SMD's skipped mini-batches
are not counted (they take a zero-gradient optimizer step and no pass of the network);
nor are stochastic depth's bypassed residual blocks' forward and backward, counted per
block from the skips the run realised (``skipped_blocks`` in the loop state: per block,
the mini-batches that bypassed it). :func:`budget_summary` gives these counts, zero for
the methods that skip nothing.

EMP's ``threshold`` policy keeps a data-dependent number of channels per step; its
kept counts are recorded only every ``log_every_steps`` chunks (``emp/kept_channels/``,
a sample, not every step), so its backward is counted dense (an upper bound) and
``emp_counted_dense`` says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefilter import data as data_lib
from edgefilter.method import flops
from edgefilter.training import config as config_lib
from edgefilter.training import runners
from edgefilter.training import steps as steps_lib


def main_batch(config: config_lib.TrainConfig) -> int:
    """Instances per main-network step (every slot is computed, so counted)."""
    if config.uses_eif:
        return config.eif_batch_size
    if config.method in ("random", "oracle", "ohem"):  # EIF's packing: round(r_set * m).
        return max(1, round(config.filter.r_set * config.batch_size))
    return config.batch_size  # SGD, EMP, and the packing baselines (batches of m).


def run_compute(
    config: config_lib.TrainConfig,
    info: data_lib.DatasetInfo,
    loop: dict[str, Any],
    sgd_instances: int | None = None,
) -> dict[str, Any]:
    """The compute block for a finished (or resumed-and-finished) run's loop state.

    ``sgd_instances``: the stream SGD would train on, the reference (default: the
    instances this run streamed; SMB streams a budget of it). Every method's breakdown
    has the same keys, zero where a method does not do that work.
    """
    shape, classes, m = info.image_shape, info.num_classes, config.batch_size
    dense = flops.per_instance(config.model, shape, classes)  # SGD's network.
    # The run's network: with E2-Train's gates, their layers too (sd adds no layer).
    run = flops.per_instance(config.model, shape, classes, **steps_lib.model_options(config))
    batch = main_batch(config)
    # SMD's skipped batches took an optimizer step (state.step) but computed nothing.
    main_steps = int(loop["state"].step) - int(loop.get("skipped_batches", 0))
    slots = main_steps * batch
    counted_dense = config.uses_emp and config.emp.policy != "topk"
    if config.uses_emp and not counted_dense:
        pruned = flops.emp_train(
            config.model,
            shape,
            classes,
            config.emp.keep_ratio,
            batch_size=batch,
            prune_first_layer=config.emp.first_layer,
        )
        backward = pruned["error_propagation"] + pruned["weight_gradient"]
        selection = pruned["selection"] * slots
    else:
        backward = run["error_propagation"] + run["weight_gradient"]
        selection = 0.0
    scale = flops.scale_for_bits(config.bits)
    breakdown = {
        "main_forward": slots * run["forward"] * scale,
        "main_backward": slots * backward * scale,
        "emp_selection": selection,
        "filter_inference": 0.0,
        "filter_training": 0.0,
        "uncertainty_forward": 0.0,
        # The main network's forward passes a baseline runs to select (oracle, OHEM,
        # Selective-Backprop): the instances its selector recorded as forwarded.
        "selection_forward": runners.selection_forwarded(loop) * dense["forward"] * scale,
    }
    if "skipped_blocks" in loop:  # Stochastic depth: bypassed blocks computed nothing.
        skipped = _skipped_block_macs(config.model, info, loop["skipped_blocks"], batch)
        breakdown["main_forward"] -= skipped["forward"] * scale
        breakdown["main_backward"] -= skipped["backward"] * scale
    if config.uses_eif:
        filt = flops.per_instance(config.filter_model, shape, 2)
        probes = config.eif_probe_size
        breakdown["filter_inference"] = int(loop["chunk"]) * m * filt["forward"] * scale
        filter_steps = int(runners.filter_state(loop).net.step)
        breakdown["filter_training"] = filter_steps * (batch + probes) * filt["train"] * scale
        breakdown["uncertainty_forward"] = main_steps * probes * dense["forward"] * scale
    total = sum(breakdown.values())
    sgd = int(loop["position"] if sgd_instances is None else sgd_instances) * dense["train"]
    return {
        "unit": "MAC" if config.bits == 32 else "BOP",
        "total": int(round(total)),
        "sgd_same_stream": int(sgd),
        "reduction": 1.0 - total / sgd,
        "breakdown": {k: int(round(v)) for k, v in breakdown.items()},
        "per_instance": dense,
        "emp_counted_dense": counted_dense,
        "counted": "analytic",
    }


def emp_layers(config: config_lib.TrainConfig, info: data_lib.DatasetInfo) -> list[dict[str, Any]]:
    """The main network's conv layers as EMP sees them, in the order the model calls them.

    Each is ``{"name", "channels", "pruned", "kept"}``: its module path (as the
    ``emp/kept_channels/<name>`` records of ``metrics.jsonl`` name it), its output
    channels ``n``, whether EMP selects among them (every conv layer but the first,
    unless ``--emp_first_layer``), and the channels its backward keeps when that is
    fixed: ``n`` for a dense layer, ``TopK.num_kept(n)`` under the topk policy; None
    under the threshold policy, whose count varies from step to step.
    """
    policy = config.emp.as_policy()
    layers = flops.per_layer(config.model, info.image_shape, info.num_classes)
    convs = [layer for layer in layers if layer.kind == "conv"]
    out = []
    for i, layer in enumerate(convs):
        n, pruned = layer.output_channels, i > 0 or config.emp.first_layer
        kept = n if not pruned else policy.num_kept(n) if config.emp.policy == "topk" else None
        out.append({"name": layer.name, "channels": n, "pruned": pruned, "kept": kept})
    return out


def block_costs(model: str, info: data_lib.DatasetInfo) -> list[dict[str, int]]:
    """Per residual block, in order, its per-instance MACs: ``forward`` and ``backward``.

    A block's layers are those under its flax path ``BasicBlock_<i>/`` (its convs and,
    for option-B shortcuts, the projection); ``backward`` is their error propagation and
    weight gradient (:mod:`edgefilter.method.flops`).
    """
    blocks: dict[int, dict[str, int]] = {}
    for layer in flops.per_layer(model, info.image_shape, info.num_classes):
        head = layer.name.split("/")[0]
        if head.startswith("BasicBlock_"):
            cost = blocks.setdefault(
                int(head.removeprefix("BasicBlock_")), dict.fromkeys(("forward", "backward"), 0)
            )
            cost["forward"] += layer.forward
            cost["backward"] += layer.error_propagation + layer.weight_gradient
    return [blocks[i] for i in sorted(blocks)]


def _skipped_block_macs(
    model: str, info: data_lib.DatasetInfo, skipped: Any, batch: int
) -> dict[str, float]:
    """MACs not computed: each block's cost times the mini-batches that bypassed it."""
    skipped = np.asarray(skipped, np.int64)
    costs = block_costs(model, info)
    return {
        part: float(batch * sum(int(n) * c[part] for n, c in zip(skipped, costs, strict=True)))
        for part in ("forward", "backward")
    }


def budget_summary(config: config_lib.TrainConfig, loop: dict[str, Any]) -> dict[str, int]:
    """summary.json's ``budget`` block, the same keys for every method (zero if unused):
    mini-batches SMD skipped, residual-block forwards stochastic depth bypassed (per
    mini-batch, summed over blocks), and the instance-blocks E2-Train's SLU gated off,
    which were computed and are counted (:mod:`edgefilter.models.selective_layer_update`;
    the source counts them as saved)."""
    del config
    return {
        "skipped_batches": int(loop.get("skipped_batches", 0)),
        "skipped_block_forwards": int(np.sum(loop.get("skipped_blocks", 0))),
        "slu_gated_instance_blocks": int(loop.get("slu_gated", 0)),
    }
