"""The early instance filter as a component: its state and three pure, jittable functions.

The filter is a small 2-way network (H = the main network would have a high loss, L =
low) trained self-supervised alongside the main network (PAPER.md, Eq. 1-7). A user's
own loop needs three calls, the way an optax transformation needs ``init``/``update``::

  fstate = instance_filter.init(filter_model, tx, key, image_shape, config)
  # For every arriving chunk of instances x (normalised):
  fstate, out = instance_filter.predict(fstate, x, valid, config)
  #   ... train the main network on x[out.pred_high]; its losses label those instances,
  #   ... and a forward pass labels the uncertainty-sampled x[out.uncertain].
  fstate, metrics = instance_filter.update(fstate, x_known, losses, pred_high, mask, config)
  # Every `config.window` chunks:
  fstate, window_metrics = instance_filter.end_window(fstate, config)

**Holding the kept ratio.** The paper's decision is ``argmax`` of the filter's output.
Trained with the class weights of Eq. 7, such a filter predicts H for far more than
``R_set`` of the stream (a class-balanced classifier over-predicts the rarer class), and
its outputs shift every time it is updated (with lr 0.1, by more within a few updates
than the spread of its margins over a chunk), so the kept fraction is neither ``R_set``
nor stable. With ``control="quantile"`` (the default) an instance is predicted H when
its margin ``logit_H - logit_L`` exceeds the ``1 - R_set`` quantile of the margins of
its own chunk: the filter still decides by its own learned ranking, and the kept
fraction is ``R_set`` by construction. Chunks are random draws from the stream, so a
per-chunk quantile costs little adaptivity; a quantile over several past chunks was
tried first and lagged behind the filter's drift (kept fractions from 0.06 to 0.46
per window on Fashion-MNIST). ``control="argmax"`` (offset 0) is the paper's rule, kept
as an ablation.

**The threshold under quantile control.** Eq. 3 raises ``T_l`` when ``R_TH >= R_set``.
With the kept fraction held at ``R_set``, ``R_TH`` is ``R_set`` times the fraction of
kept instances labelled H, so it reaches ``R_set`` only when every kept instance is H:
Eq. 3 then lowers ``T_l`` without end (seen: ``T_l`` fell to 0.001, every label became H,
the filter learned nothing and the kept instances were a biased, not a hard, subset;
75% test accuracy after 17 epochs against SGD's 90%). ``T_l`` is meant to be the loss
above which ``R_set`` of the stream lies, so under quantile control the same
multiplicative rule (Eq. 3, same ``alpha1``/``alpha2``) compares ``R_set`` with an
estimate of the fraction of the *stream* labelled H: the true-high fraction plus the
predicted-L fraction times the H rate of *randomly* sampled predicted-L instances
(``update``'s ``random`` mask; a few per chunk, labelled by a main-network forward like
the uncertainty-sampled ones, and added to the filter's training set). Under ``argmax``
control Eq. 3 is applied to ``R_TH`` exactly as the paper states.

Under quantile control the fraction labelled H (``label_rate``) no longer has to equal
the fraction kept (``R_set``): with ``label_rate < R_set`` the filter learns to rank
the hardest instances of the stream while still keeping ``R_set`` of every chunk.
``None`` (the default) sets it to ``R_set``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from edgefilter.method import eif
from edgefilter.models.state import TrainState, create_train_state

__all__ = [
    "CONTROLS",
    "FilterConfig",
    "FilterState",
    "Prediction",
    "end_window",
    "init",
    "predict",
    "update",
]

CONTROLS = ("quantile", "argmax")


def _setting(default: Any, help: str, flag: str | None = None) -> Any:
    """A field with its command-line flag's help (and name, when not the field's own)."""
    metadata = {"help": help} if flag is None else {"help": help, "flag": flag}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """Hyper-parameters of the filter (frozen and hashable: static under jit).

    Each field's ``metadata["help"]`` says what it sets; ``edgefilter.training.config``
    turns every field into a command-line flag of that help, named ``metadata["flag"]``
    where the flag's name is not the field's (``window`` is ``--eif_window``). A bad value
    raises ``ValueError`` naming the field: ``FilterConfig(r_set=1.5)`` says
    ``r_set=1.5 must lie in (0, 1)``.
    """

    r_set: float = _setting(0.3, "target fraction R_set of the stream trained on (Eq. 3, 7).")
    alpha1: float = _setting(1.05, "T_l multiplier when R_TH >= R_set (Eq. 3), >= 1.")
    alpha2: float = _setting(0.95, "T_l multiplier when R_TH < R_set (Eq. 3), in (0, 1].")
    window: int = _setting(10, "chunks n over which R_TH is measured (Eq. 2).", "eif_window")
    entropy_threshold: float = _setting(
        0.5, "entropy_T of uncertainty sampling, in nats, at most ln 2 = 0.693 (Eq. 5)."
    )
    init_threshold: float = _setting(1.0, "initial loss threshold T_l (Eq. 1).")
    static_threshold: bool = _setting(
        False, "keep T_l fixed at init_threshold (an ablation).", "eif_static_threshold"
    )
    uncertainty: bool = _setting(
        True, "uncertainty sampling (Eq. 4-5); False is the ablation.", "eif_uncertainty"
    )
    weighted: bool = _setting(
        True, "class-weighted filter loss (Eq. 6-7); False is the ablation.", "eif_weighted"
    )
    control: str = _setting(
        "quantile",
        "decision rule: 'quantile' holds the kept ratio at R_set, 'argmax' is the paper's "
        "(see the module doc).",
        "eif_control",
    )
    label_rate: float | None = _setting(
        None,
        "under quantile control, the fraction of the stream T_l aims to label H "
        "(Eq. 3's target; default: r_set).",
        "eif_label_rate",
    )

    @property
    def threshold_target(self) -> float:
        """The rate Eq. 3 compares with: ``label_rate`` under quantile control, else ``r_set``."""
        if self.control == "quantile" and self.label_rate is not None:
            return self.label_rate
        return self.r_set

    def __post_init__(self) -> None:
        real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)  # noqa: E731
        finite = lambda v: real(v) and math.isfinite(v)  # noqa: E731
        label_rate = self.label_rate
        checks = [
            ("r_set", finite(self.r_set) and 0 < self.r_set < 1, "must lie in (0, 1)"),
            ("alpha1", finite(self.alpha1) and self.alpha1 >= 1, "must be a finite number >= 1"),
            ("alpha2", finite(self.alpha2) and 0 < self.alpha2 <= 1, "must lie in (0, 1]"),
            (
                "window",
                isinstance(self.window, numbers.Integral)
                and not isinstance(self.window, bool)
                and self.window >= 1,
                "must be a positive integer",
            ),
            (
                "entropy_threshold",
                finite(self.entropy_threshold) and 0 <= self.entropy_threshold <= math.log(2),
                "must lie in [0, ln 2 = 0.693] (nats: a 2-way entropy never exceeds ln 2)",
            ),
            (
                "init_threshold",
                finite(self.init_threshold) and self.init_threshold > 0,
                "must be a finite number > 0",
            ),
            (
                "label_rate",
                label_rate is None or (finite(label_rate) and 0 < label_rate < 1),
                "must lie in (0, 1) or be None (= r_set)",
            ),
            ("control", self.control in CONTROLS, f"must be one of {', '.join(CONTROLS)}"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} {allowed}")
        for name in ("static_threshold", "uncertainty", "weighted"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}={getattr(self, name)!r} must be True or False")


class FilterState(struct.PyTreeNode):
    """Everything the filter carries between chunks (a pytree: checkpointable, jittable).

    Window counters accumulate over the current window of ``config.window`` chunks.
    """

    net: TrainState
    threshold: jax.Array  # T_l (Eq. 1, 3).
    offset: jax.Array  # Last chunk's b: predicted H when logit_H - logit_L > b.
    streamed: jax.Array  # Instances streamed in the window (Eq. 2's m * n).
    predicted_high: jax.Array  # Of them, predicted H.
    true_high: jax.Array  # Predicted H and labelled H (Eq. 2's numerator).
    known: jax.Array  # Instances whose label became known (trained or sampled).
    wrong: jax.Array  # Of them, predicted differently from their label.
    sampled: jax.Array  # Uncertainty-sampled instances (predicted L, Eq. 5).
    main_loss_sum: jax.Array  # Sum of main-network losses over the known instances.
    random_known: jax.Array  # Randomly sampled predicted-L instances labelled (window).
    random_high: jax.Array  # Of them, labelled H.


class Prediction(NamedTuple):
    """What :func:`predict` decides for each instance of a chunk."""

    pred_high: jax.Array  # [m] bool, the filter's decision.
    uncertain: jax.Array  # [m] bool, predicted L with entropy > entropy_T (Eq. 5).
    entropy: jax.Array  # [m] prediction entropy (Eq. 4).


def _zeros_i32() -> jax.Array:
    return jnp.zeros((), jnp.int32)


def init(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple[int, ...],
    config: FilterConfig,
) -> FilterState:
    """A fresh filter: network parameters, optimizer state, ``T_l`` and empty window."""
    net = create_train_state(model, tx, key, image_shape)
    return FilterState(
        net=net,
        threshold=jnp.asarray(config.init_threshold, jnp.float32),
        offset=jnp.zeros((), jnp.float32),
        streamed=_zeros_i32(),
        predicted_high=_zeros_i32(),
        true_high=_zeros_i32(),
        known=_zeros_i32(),
        wrong=_zeros_i32(),
        sampled=_zeros_i32(),
        main_loss_sum=jnp.zeros((), jnp.float32),
        random_known=_zeros_i32(),
        random_high=_zeros_i32(),
    )


def _logits(net: TrainState, params: Any, x: jax.Array, train: bool):
    variables = {"params": params, "batch_stats": net.batch_stats}
    if train:
        return net.apply_fn(variables, x, train=True, mutable=["batch_stats"])
    return net.apply_fn(variables, x, train=False), {}


def predict(
    state: FilterState, x: jax.Array, valid: jax.Array, config: FilterConfig
) -> tuple[FilterState, Prediction]:
    """Filter forward on a chunk: decisions, uncertainty sampling, window bookkeeping.

    Implements the filter's inference and Eq. 4-5: the entropy of the softmax output
    and the predicted-L instances whose entropy exceeds ``entropy_T``.

    Args:
      state: the filter state.
      x: normalised chunk ``[m, H, W, C]``.
      valid: ``[m]`` bool, False for the padding of a run's last, partial chunk.
      config: filter hyper-parameters.

    Returns:
      The state with the chunk's counts added, and the chunk's prediction.
    """
    logits, _ = _logits(state.net, state.net.params, x, train=False)
    logits = logits.astype(jnp.float32)
    margin = logits[:, 1] - logits[:, 0]
    if config.control == "quantile":
        offset = jnp.nanquantile(jnp.where(valid, margin, jnp.nan), 1.0 - config.r_set)
    else:
        offset = jnp.zeros((), jnp.float32)
    pred_high = (margin > offset) & valid
    entropy = eif.prediction_entropy(jax.nn.softmax(logits))
    uncertain = eif.uncertainty_mask(pred_high, entropy, config.entropy_threshold) & valid
    if not config.uncertainty:
        uncertain = jnp.zeros_like(uncertain)
    state = state.replace(
        offset=offset.astype(jnp.float32),
        streamed=state.streamed + jnp.sum(valid, dtype=jnp.int32),
        predicted_high=state.predicted_high + jnp.sum(pred_high, dtype=jnp.int32),
        sampled=state.sampled + jnp.sum(uncertain, dtype=jnp.int32),
    )
    return state, Prediction(pred_high, uncertain, entropy)


def update(
    state: FilterState,
    x: jax.Array,
    main_losses: jax.Array,
    pred_high: jax.Array,
    mask: jax.Array,
    config: FilterConfig,
    random: jax.Array | None = None,
) -> tuple[FilterState, dict[str, jax.Array]]:
    """One filter training step on instances whose main-network loss is known.

    Labels them by Eq. 1 (``loss >= T_l``), counts true-high instances for Eq. 2, and
    takes one optimizer step on the weighted filter loss of Eq. 6-7 over ``mask``.

    Args:
      state: the filter state.
      x: normalised instances ``[k, H, W, C]``: trained (predicted H) and sampled ones.
      main_losses: ``[k]`` main-network losses on ``x``.
      pred_high: ``[k]`` the filter's earlier decision on each of them.
      mask: ``[k]`` bool, False for padding.
      config: filter hyper-parameters.
      random: ``[k]`` bool, True for predicted-L instances sampled at random (not by
        uncertainty): their labels estimate the H rate among predicted-L instances.
    """
    if random is None:
        random = jnp.zeros_like(mask)
    label_high = eif.loss_labels(main_losses, state.threshold)

    def loss_fn(params):
        logits, updates = _logits(state.net, params, x, train=True)
        loss = eif.filter_loss(logits, label_high, mask, config.r_set, weighted=config.weighted)
        return loss, updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.net.params)
    net = state.net.apply_gradients(
        grads=grads, batch_stats=updates.get("batch_stats", state.net.batch_stats)
    )
    known = jnp.sum(mask, dtype=jnp.int32)
    state = state.replace(
        net=net,
        true_high=state.true_high + jnp.sum(pred_high & label_high & mask, dtype=jnp.int32),
        known=state.known + known,
        wrong=state.wrong + jnp.sum((pred_high != label_high) & mask, dtype=jnp.int32),
        main_loss_sum=state.main_loss_sum + jnp.sum(jnp.where(mask, main_losses, 0.0)),
        random_known=state.random_known + jnp.sum(random & mask, dtype=jnp.int32),
        random_high=state.random_high + jnp.sum(random & mask & label_high, dtype=jnp.int32),
    )
    metrics = {
        "filter_loss": loss,
        "label_high_fraction": jnp.sum(label_high & mask) / jnp.maximum(known, 1),
    }
    return state, metrics


def end_window(state: FilterState, config: FilterConfig) -> tuple[FilterState, dict]:
    """Closes a window of ``n`` chunks: Eq. 2 for ``R_TH``, Eq. 3 for ``T_l``.

    Under quantile control the rule compares ``config.threshold_target`` (``label_rate``,
    or ``R_set``) with the estimated fraction of the stream labelled H
    (``high_rate_estimate``) instead of ``R_TH`` (see the module doc).
    Resets the window's counters. Returns the window's metrics: ``r_th``, ``threshold``
    (the new ``T_l``), ``predicted_high_fraction``, ``wrong_prediction_ratio`` (over
    instances whose label is known), ``sampled_fraction``, ``main_loss``, ``offset``,
    ``high_rate_estimate`` and ``random_sampled``.
    """
    streamed = jnp.maximum(state.streamed, 1)
    r_th = state.true_high / streamed
    # Fraction of the stream labelled H: known for predicted-H instances, estimated from
    # the random samples for predicted-L ones (see the module doc).
    low_high_rate = state.random_high / jnp.maximum(state.random_known, 1)
    high_rate = r_th + (state.streamed - state.predicted_high) / streamed * low_high_rate
    controlled = r_th
    if config.control == "quantile":
        controlled = jnp.where(state.random_known > 0, high_rate, r_th)
    threshold = state.threshold
    if not config.static_threshold:
        threshold = eif.update_threshold(
            threshold, controlled, config.threshold_target, config.alpha1, config.alpha2
        )
    metrics = {
        "r_th": r_th,
        "threshold": threshold,
        "predicted_high_fraction": state.predicted_high / streamed,
        "wrong_prediction_ratio": state.wrong / jnp.maximum(state.known, 1),
        "sampled_fraction": state.sampled / streamed,
        "main_loss": state.main_loss_sum / jnp.maximum(state.known, 1),
        "offset": state.offset,
        "high_rate_estimate": high_rate,
        "random_sampled": state.random_known,
    }
    zero = _zeros_i32()
    state = state.replace(
        threshold=threshold.astype(jnp.float32),
        streamed=zero,
        predicted_high=zero,
        true_high=zero,
        known=zero,
        wrong=zero,
        sampled=zero,
        main_loss_sum=jnp.zeros((), jnp.float32),
        random_known=zero,
        random_high=zero,
    )
    return state, metrics
