"""Early instance filter (EIF): the paper's Eq. 1-7 as pure, jittable functions.

A small 2-way *filter network* predicts, for each streamed instance, whether the main
network would have a high (H) or a low (L) loss on it; only predicted-H instances train
the main network (PAPER.md, "Early instance filter"). This module holds the arithmetic of
that scheme and nothing else; no state, no randomness, no side effects:

* :func:`loss_labels` (Eq. 1): self-supervised labels ``loss >= T_l``.
* :func:`true_high_ratio` (Eq. 2): ``R_TH``, fraction of the window predicted H and
  labelled H.
* :func:`update_threshold` (Eq. 3): multiplicative adaptation of ``T_l``.
* :func:`prediction_entropy` (Eq. 4) and :func:`uncertainty_mask` (Eq. 5): uncertainty
  sampling of predicted-L instances.
* :func:`filter_loss_weights` and :func:`filter_loss` (Eq. 6-7): the class-weighted
  cross-entropy that trains the filter.
* :func:`predict_high`: the filter's decision, ``argmax(logits) == 1``.

Conventions: the filter's logits have a last axis of size 2 where index 0 is L and
index 1 is H ("high loss"); boolean arrays use ``True`` for H. Every function works on any
batch shape (the instance axes are all leading axes) and under ``jax.jit``.

Example, one filter step written by hand::

    probs = jax.nn.softmax(logits)                       # logits: [m, 2]
    pred_high = eif.predict_high(logits)
    unsure = eif.uncertainty_mask(pred_high, eif.prediction_entropy(probs), 0.6)
    label_high = eif.loss_labels(main_losses, threshold)  # losses of H + unsure only
    loss = eif.filter_loss(logits, label_high, pred_high | unsure, r_set=0.3)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "filter_loss",
    "filter_loss_weights",
    "loss_labels",
    "predict_high",
    "prediction_entropy",
    "true_high_ratio",
    "uncertainty_mask",
    "update_threshold",
]


def _check_r_set(r_set: ArrayLike) -> None:
    """Raises ValueError if a concrete ``r_set`` (a number or an array) is outside (0, 1).

    Traced values (``r_set`` passed as a jit argument) cannot be inspected and are not
    checked.
    """
    if isinstance(r_set, jax.core.Tracer):
        return
    if isinstance(r_set, bool):
        raise ValueError(f"r_set must be a number in the open interval (0, 1), got {r_set!r}.")
    if np.asarray(r_set).dtype.kind not in "iuf":
        raise TypeError(f"r_set must be a real number in (0, 1), got {r_set!r}.")
    values = np.asarray(r_set, np.float64)
    if not np.all((values > 0.0) & (values < 1.0)):
        bad = values[~((values > 0.0) & (values < 1.0))]
        shown = r_set if values.ndim == 0 else bad[:3].tolist()
        raise ValueError(
            f"r_set (target ratio of instances predicted high) must lie in the open interval "
            f"(0, 1), got {shown!r}."
        )


def _check_mask(mask: jax.Array, shape: tuple[int, ...], of: str) -> None:
    """Raises ValueError unless ``mask`` broadcasts to ``shape`` without enlarging it."""
    try:
        ok = np.broadcast_shapes(mask.shape, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"mask has shape {mask.shape}; it must broadcast to {of}'s {shape}.")


def _float_dtype(x: jax.Array) -> jnp.dtype:
    """At least float32 (bf16/fp16 inputs are upcast for the reductions)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def loss_labels(losses: ArrayLike, threshold: ArrayLike) -> jax.Array:
    """Self-supervised filter labels from the main network's losses (Eq. 1).

    ``y_i = H if loss_i >= T_l else L``.

    Args:
      losses: per-instance losses of the main network, any shape.
      threshold: the loss threshold ``T_l``, a scalar (or broadcastable to ``losses``).

    Returns:
      Boolean array shaped like ``losses``; ``True`` means label H (high loss).

    Example:
      >>> loss_labels(jnp.array([0.2, 1.0, 3.0]), 1.0)
      Array([False,  True,  True], dtype=bool)
    """
    return jnp.asarray(losses) >= threshold


def true_high_ratio(
    pred_high: ArrayLike,
    label_high: ArrayLike,
    mask: ArrayLike | None = None,
) -> jax.Array:
    """True-high ratio ``R_TH`` of a window of streamed instances (Eq. 2).

    ``R_TH = (1 / (m n)) * sum_i 1[pred_i = H] * 1[y_i = H]`` over the last ``n``
    mini-batches of size ``m``; pass the whole window (e.g. shape ``[n, m]``) or any
    flattening of it.

    The denominator is every instance *streamed* in the window, not only the instances
    whose label is known. That is sound because every predicted-H instance reaches the
    main network and so has a known label; a predicted-L instance whose label is unknown
    has ``pred_high = False`` and adds nothing to the numerator, whatever placeholder sits
    in ``label_high`` for it.

    ``mask`` (optional) marks which entries belong to the window at all, e.g. the filled
    slots of a ring buffer that has not yet seen ``n`` mini-batches, or padding. Entries
    outside the mask count in neither numerator nor denominator. It is **not** a
    "label known" mask: keep unlabelled predicted-L instances inside it, or the ratio is
    taken over the seen instances only and overstates ``R_TH``. An all-``False`` mask
    (empty window) gives 0.0.

    Args:
      pred_high: boolean, the filter's prediction (True = H).
      label_high: boolean, the label from :func:`loss_labels` (True = H); any value where
        the label is unknown (those entries are predicted L).
      mask: optional boolean, True for entries that are part of the window. Defaults to
        all entries.

    Returns:
      Float32 scalar in [0, 1].

    Example:
      >>> true_high_ratio(jnp.array([True, True, False, False]),
      ...                 jnp.array([True, False, True, False]))
      Array(0.25, dtype=float32)
    """
    hit = jnp.logical_and(pred_high, label_high)
    if mask is None:
        return jnp.mean(hit, dtype=jnp.float32)
    mask = jnp.asarray(mask, dtype=bool)
    _check_mask(mask, hit.shape, "pred_high")
    hit, mask = jnp.broadcast_arrays(hit, mask)
    count = jnp.sum(mask, dtype=jnp.float32)
    num = jnp.sum(jnp.logical_and(hit, mask), dtype=jnp.float32)
    return num / jnp.maximum(count, 1.0)


def update_threshold(
    threshold: ArrayLike,
    r_th: ArrayLike,
    r_set: ArrayLike,
    alpha1: ArrayLike,
    alpha2: ArrayLike,
) -> jax.Array:
    """Adaptive loss threshold update (Eq. 3).

    ``T_l <- alpha1 * T_l`` if ``R_TH >= R_set``, else ``T_l <- alpha2 * T_l``. With the
    paper's ``alpha1 > 1 > alpha2`` the threshold rises when too many instances are
    true-high and falls otherwise, tracking the main network's loss. The alphas are not
    checked, so ``alpha1 = alpha2 = 1`` gives the static-threshold ablation.

    Args:
      threshold: current ``T_l``.
      r_th: the window's true-high ratio from :func:`true_high_ratio`.
      r_set: target ratio ``R_set`` in (0, 1) (checked when a Python number).
      alpha1: factor applied when ``r_th >= r_set``.
      alpha2: factor applied otherwise.

    Returns:
      The new threshold (a scalar array, or broadcast shape of the inputs).

    Example:
      >>> update_threshold(2.0, 0.5, 0.3, 1.1, 0.9)   # r_th >= r_set: 2.0 * 1.1
      Array(2.2, dtype=float32, weak_type=True)
    """
    _check_r_set(r_set)
    threshold = jnp.asarray(threshold)
    return jnp.where(jnp.asarray(r_th) >= r_set, alpha1 * threshold, alpha2 * threshold)


def prediction_entropy(probs: ArrayLike) -> jax.Array:
    """Entropy of the filter's softmax output (Eq. 4).

    ``E_i = -sum_c p_i,c log p_i,c`` over the last axis, natural log, with
    ``0 log 0 = 0``, so one-hot probabilities give exactly 0 and neither the value nor its
    gradient is NaN. For 2 classes the result lies in ``[0, ln 2]``.

    Args:
      probs: probabilities over the last axis (e.g. ``jax.nn.softmax(logits)``).

    Returns:
      Entropy in nats, shape ``probs.shape[:-1]``.

    Example:
      >>> prediction_entropy(jnp.array([[0.5, 0.5], [1.0, 0.0]]))  # [ln 2, 0]
      Array([0.6931472, 0.       ], dtype=float32)
    """
    probs = jnp.asarray(probs)
    positive = probs > 0
    safe = jnp.where(positive, probs, 1.0)  # keeps log (and its gradient) finite at p = 0
    # Negate per term, not after the sum, so one-hot rows give +0.0 rather than -0.0.
    return jnp.sum(jnp.where(positive, -probs * jnp.log(safe), 0.0), axis=-1)


def uncertainty_mask(
    pred_high: ArrayLike,
    entropy: ArrayLike,
    entropy_threshold: ArrayLike,
) -> jax.Array:
    """Uncertainty sampling of predicted-L instances (Eq. 5).

    Selects the instances predicted L whose prediction entropy strictly exceeds
    ``entropy_T``; they go through the main network's forward pass only, to obtain their
    label, and join the filter's training set.

    Args:
      pred_high: boolean, the filter's prediction (True = H).
      entropy: per-instance entropy from :func:`prediction_entropy`.
      entropy_threshold: ``entropy_T`` (nats; at most ``ln 2`` to select anything).

    Returns:
      Boolean array, True for uncertainty-sampled instances (never True where
      ``pred_high`` is).

    Example:
      >>> uncertainty_mask(jnp.array([True, False, False]), jnp.array([0.69, 0.69, 0.1]), 0.5)
      Array([False,  True, False], dtype=bool)
    """
    return jnp.logical_and(jnp.logical_not(pred_high), jnp.asarray(entropy) > entropy_threshold)


def predict_high(logits: ArrayLike) -> jax.Array:
    """The filter's decision: H where ``argmax(logits, -1) == 1``.

    Ties (equal logits) resolve to L, the first index.

    Args:
      logits: filter logits with last axis of size 2 (index 1 = H).

    Returns:
      Boolean array of shape ``logits.shape[:-1]``.

    Example:
      >>> predict_high(jnp.array([[0.0, 1.0], [2.0, -1.0], [0.0, 0.0]]))
      Array([ True, False, False], dtype=bool)
    """
    logits = jnp.asarray(logits)
    if logits.shape[-1:] != (2,):
        raise ValueError(f"filter logits need a last axis of size 2, got shape {logits.shape}.")
    return jnp.argmax(logits, axis=-1) == 1


def filter_loss_weights(
    label_high: ArrayLike,
    mask: ArrayLike | None,
    r_set: ArrayLike,
    *,
    weighted: bool = True,
) -> jax.Array:
    """Normalised per-instance weights of the filter loss (Eq. 7).

    Raw weights are ``w_H = 1 / R_set`` for label H and ``w_L = 1 / (1 - R_set)`` for
    label L, zero outside ``mask``, then divided by their sum so they add up to 1 over the
    masked instances. With ``n_H`` masked H and ``n_L`` masked L instances the group
    totals therefore satisfy::

        W_H / W_L = (n_H / R_set) / (n_L / (1 - R_set))

    so the two groups weigh equally exactly when ``n_H : n_L = R_set : (1 - R_set)``, the
    class balance the threshold adaptation aims for; a rarer class is up-weighted
    relative to its count, but not fully balanced otherwise. ``weighted=False`` gives
    uniform weights ``1 / (n_H + n_L)`` (the paper's unweighted ablation). An
    all-``False`` mask gives all-zero weights (no NaN).

    Args:
      label_high: boolean labels (True = H).
      mask: boolean, True for instances in the filter's training set (predicted H plus
        uncertainty-sampled); ``None`` means all instances.
      r_set: target ratio ``R_set`` in (0, 1) (checked when a Python number).
      weighted: apply the class weights (default) or weigh instances uniformly.

    Returns:
      Float32 array shaped like ``label_high``, non-negative, summing to 1 over the mask
      (or to 0 if the mask is empty).

    Example:
      >>> filter_loss_weights(jnp.array([True, False, False, False]), None, 0.25)
      Array([0.5       , 0.16666667, 0.16666667, 0.16666667], dtype=float32)
    """
    _check_r_set(r_set)
    label_high = jnp.asarray(label_high, dtype=bool)
    mask = jnp.ones_like(label_high) if mask is None else jnp.asarray(mask, dtype=bool)
    _check_mask(mask, label_high.shape, "label_high")
    label_high, mask = jnp.broadcast_arrays(label_high, mask)
    if weighted:
        r = jnp.asarray(r_set, dtype=jnp.float32)
        raw = jnp.where(label_high, 1.0 / r, 1.0 / (1.0 - r))
    else:
        raw = jnp.ones(label_high.shape, jnp.float32)
    raw = jnp.where(mask, raw, 0.0)
    total = jnp.sum(raw)
    return raw / jnp.where(total > 0, total, 1.0)


def filter_loss(
    logits: ArrayLike,
    label_high: ArrayLike,
    mask: ArrayLike | None,
    r_set: ArrayLike,
    *,
    weighted: bool = True,
) -> jax.Array:
    """Class-weighted cross-entropy of the filter (Eq. 6-7).

    ``L = sum_i w_i * L_i`` with ``L_i = -log p_i,y_i`` (softmax cross-entropy of the
    2-way filter) and ``w_i`` from :func:`filter_loss_weights`, i.e. the weighted mean of
    ``L_i`` over the masked instances. Masked-out instances contribute neither value nor
    gradient; an all-``False`` mask gives 0.0 with zero gradients. Logits of masked-out
    slots (e.g. padding) must still be finite: a NaN there would reach the gradient.

    Args:
      logits: filter logits, shape ``[..., 2]``, index 1 = H ("high loss").
      label_high: boolean labels from :func:`loss_labels`, shape ``logits.shape[:-1]``.
      mask: boolean, True for the filter's training set (predicted H plus
        uncertainty-sampled, the instances whose label is known); ``None`` means all.
      r_set: target ratio ``R_set`` in (0, 1) (checked when a Python number).
      weighted: class weights ``1/R_set``, ``1/(1-R_set)`` (default) or uniform weights.

    Returns:
      Scalar loss (float32, or the logits' dtype if wider).

    Example:
      >>> filter_loss(jnp.zeros((4, 2)), jnp.array([True, False, False, False]), None, 0.25)
      Array(0.6931472, dtype=float32)
    """
    logits = jnp.asarray(logits)
    if logits.shape[-1:] != (2,):
        raise ValueError(f"filter logits need a last axis of size 2, got shape {logits.shape}.")
    logits = logits.astype(_float_dtype(logits))
    label_high = jnp.asarray(label_high, dtype=bool)
    if label_high.shape != logits.shape[:-1]:
        raise ValueError(
            f"label_high shape {label_high.shape} does not match logits batch shape "
            f"{logits.shape[:-1]}."
        )
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    per_instance = -jnp.where(label_high, log_probs[..., 1], log_probs[..., 0])
    weights = filter_loss_weights(label_high, mask, r_set, weighted=weighted)
    return jnp.sum(weights.astype(per_instance.dtype) * per_instance)
