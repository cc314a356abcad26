"""The filter's selection packed through host-side queues, chunk by chunk.

The command line's ``eif`` / ``eif_emp`` run on the stream engine
(:mod:`edgefilter.training.engine`) except under the paper's argmax rule
(``--eif_control=argmax``) or a non-default ``--eif_batch_size``, whose data-dependent
number of main steps per chunk this runner handles (:mod:`edgefilter.training.runners`).

For every arriving chunk of ``m`` instances (PAPER.md, "Early instance filter"):

1. the filter runs forward on all of them (prediction and entropy, Eq. 4-5);
2. predicted-H instances join the *train queue*; predicted-L instances whose entropy
   exceeds ``entropy_T`` join the *probe queue* (most uncertain first), and
   ``eif_random_probes`` predicted-L instances drawn at random join the *random queue*
   (they estimate how many predicted-L instances are in fact high-loss, which sets
   ``T_l`` under quantile control: see ``instance_filter``); each queue holds at most
   four probe batches, further sampled instances are skipped and counted;
3. whenever the train queue holds a full batch of ``b`` instances (``eif_batch_size``,
   by default ``round(r_set * m)``, see below), one jitted step
   a. runs the main network forward on ``P`` sampled instances (no update; up to half
      of the slots random ones, the rest uncertain ones): their losses give their labels;
   b. trains the main network (forward and backward, with EMP in ``eif_emp``) on the
      ``b`` queued predicted-H instances; the forward's losses give their labels;
   c. updates the filter on those ``b + P`` labelled instances with the weighted loss
      (Eq. 6-7) and counts true-high instances for ``R_TH`` (Eq. 2);
4. every ``n`` chunks ``R_TH`` is closed and ``T_l`` adapts (Eq. 3).

Static shapes: the main network always trains on full batches of ``b`` packed
instances and probes exactly ``P`` instances per step (padding slots, when the probe
queue is short, repeat train instances with mask 0: computed, counted, not learned
from), so no step is recompiled whatever the filter selects. What a chunk leaves in
the train queue waits for the next chunk, across epoch boundaries too. At the very end
of the run, a last partial batch is trained with zero-weight padding (as SGD's last
partial chunk is), so nothing selected is lost.

The main batch ``b``: the paper's main network takes one step per stream mini-batch, on
the ~``R_set * m`` instances the filter kept from it. Packing to ``b = round(R_set * m)``
keeps that step count (as many steps as SGD), at a fixed shape. Packing to ``b = m``
instead would give the main network only ``R_set`` as many steps as SGD; on LeNet /
Fashion-MNIST (20 epochs, r_set 0.3) that cost 1.2 points of accuracy (README, Results),
and a learning rate scaled up by ``m / b`` recovered only half of it. Larger ``b`` runs
faster per instance on a CPU, so ``--eif_batch_size`` trades accuracy for time.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from edgefilter import backends
from edgefilter import data as data_lib
from edgefilter.method import instance_filter
from edgefilter.training import config as config_lib
from edgefilter.training import steps as train_lib
from edgefilter.training import stream as stream_lib

PROBE_QUEUE_BATCHES = 4


def filter_optimizer(config: config_lib.TrainConfig) -> optax.GradientTransformation:
    """SGD for the filter: lr 0.1 (halved after ``filter_lr_decay_steps`` updates, MNIST)."""
    boundaries = {config.filter_lr_decay_steps: 0.5} if config.filter_lr_decay_steps else {}
    schedule = optax.piecewise_constant_schedule(config.filter_learning_rate, boundaries)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum),
    )


def make_predict_step(
    info: data_lib.DatasetInfo,
    fconfig: instance_filter.FilterConfig,
    xla_cpu: bool | None = None,
):
    """Jitted ``predict(filter_state, images_uint8, valid) -> (filter_state, Prediction)``.

    With the backend switch on, compiled without XLA:CPU's fusion emitters: the filter's
    forward on every streamed chunk runs faster so (``edgefilter/backends/xla_cpu/compile.py``).
    """

    @functools.partial(backends.jit, xla_cpu=xla_cpu, donate_argnums=0, fusion_emitters=False)
    def predict(fstate, images, valid):
        return instance_filter.predict(
            fstate, train_lib.preprocess(images, info, None), valid, fconfig
        )

    return predict


def make_eif_step(
    info: data_lib.DatasetInfo,
    fconfig: instance_filter.FilterConfig,
    probes: int,
    xla_cpu: bool | None = None,
    channel_counts: bool = False,
):
    """Jitted step 3 of the module doc: probe forward, main update, filter update.

    ``channel_counts``: the main step's metrics hold its per-layer kept channels under
    EMP (:func:`edgefilter.training.steps.train_step_body`).
    """

    @functools.partial(backends.jit, xla_cpu=xla_cpu, donate_argnums=(0, 1))
    def eif_step(
        main,
        fstate,
        images,
        labels,
        weights,
        probe_images,
        probe_labels,
        probe_mask,
        probe_random,
        key,
    ):
        x = train_lib.preprocess(images, info, None)
        xs, losses_known = [x], []
        pred_high, mask = [jnp.ones(len(labels), bool)], [weights > 0]
        random = [jnp.zeros(len(labels), bool)]
        if probes:  # Labels of sampled instances, from the pre-update network.
            xp = train_lib.preprocess(probe_images, info, None)
            logits = main.apply_fn(
                {"params": main.params, "batch_stats": main.batch_stats}, xp, train=False
            )
            losses_known.append(
                optax.softmax_cross_entropy_with_integer_labels(
                    logits.astype(jnp.float32), probe_labels
                )
            )
            xs.append(xp)
            pred_high.append(jnp.zeros(probes, bool))
            mask.append(probe_mask)
            random.append(probe_random)
        main, metrics, train_losses = train_lib.train_step_body(
            main, images, labels, weights, key, info, channel_counts=channel_counts
        )
        fstate, filter_metrics = instance_filter.update(
            fstate,
            jnp.concatenate(xs),
            jnp.concatenate([train_losses, *losses_known]),
            jnp.concatenate(pred_high),
            jnp.concatenate(mask),
            fconfig,
            jnp.concatenate(random),
        )
        return main, fstate, {**metrics, **filter_metrics}

    return eif_step


class EifRunner:
    """Host side of the filtered stream: predictions in, packed batches out.

    The runner owns the jitted functions; all state lives in the loop-state dict
    (``filter``, ``train_queue``, ``probe_queue``, ``skipped_probes``), so it is
    checkpointed with the rest.
    """

    def __init__(
        self,
        config: config_lib.TrainConfig,
        info: data_lib.DatasetInfo,
        filter_model: Any,
        dataset: data_lib.Dataset,
        root: jax.Array,
    ):
        self.config = config
        self.fconfig = config.filter
        self.batch = config.eif_batch_size
        self.probes = config.eif_probe_size
        self.random_probes = config.eif_random_probes if self.probes else 0
        self.dataset = dataset
        self.filter_model = filter_model
        self.info = info
        self.root = root
        self.predict = make_predict_step(info, self.fconfig, config.xla_cpu)
        self.step = make_eif_step(
            info, self.fconfig, self.probes, config.xla_cpu, channel_counts=config.uses_emp
        )
        self.end_window = backends.jit(
            functools.partial(instance_filter.end_window, config=self.fconfig),
            xla_cpu=config.xla_cpu,
            donate_argnums=0,
        )

    def initial(self) -> dict[str, Any]:
        """The runner's part of a fresh loop state."""
        fstate = instance_filter.init(
            self.filter_model,
            filter_optimizer(self.config),
            jax.random.fold_in(self.root, 2**31 - 1),
            self.info.image_shape,
            self.fconfig,
        )
        return {
            "filter": fstate,
            # A chunk adds at most batch_size instances to a queue drained below one batch.
            "train_queue": stream_lib.Queue.empty(self.batch + self.config.batch_size),
            "probe_queue": stream_lib.Queue.empty(max(1, PROBE_QUEUE_BATCHES * self.probes)),
            "random_queue": stream_lib.Queue.empty(max(1, PROBE_QUEUE_BATCHES * self.probes)),
            "skipped_probes": np.asarray(0, np.int64),
        }

    def process(
        self, loop: dict[str, Any], indices: np.ndarray, weights: np.ndarray, chunk: int
    ) -> tuple[dict[str, Any], list[tuple[str, dict]]]:
        """Steps 1-4 of the module doc for one chunk; returns loop state and records."""
        images = self.dataset.train_images[indices]
        fstate, pred = self.predict(loop["filter"], images, weights > 0)
        fetched = jax.device_get((pred.pred_high, pred.uncertain, pred.entropy))
        pred_high, uncertain, entropy = (np.array(a) for a in fetched)  # Writable copies.
        loop = dict(loop, filter=fstate)
        loop["train_queue"], overflow = loop["train_queue"].push(indices[pred_high])
        assert overflow == 0, "the train queue is drained below one batch after every chunk"
        if self.random_probes:  # Random predicted-L instances (see instance_filter's doc).
            low = np.flatnonzero(~pred_high & (weights > 0))
            rng = np.random.default_rng((self.config.seed, chunk))
            chosen = rng.choice(low, min(self.random_probes, len(low)), replace=False)
            uncertain[chosen] = False  # Probed once, as a random sample.
            loop["random_queue"], skipped = loop["random_queue"].push(indices[chosen])
            loop["skipped_probes"] = np.asarray(loop["skipped_probes"] + skipped, np.int64)
        if self.probes:
            order = np.argsort(-entropy[uncertain], kind="stable")
            loop["probe_queue"], skipped = loop["probe_queue"].push(indices[uncertain][order])
            loop["skipped_probes"] = np.asarray(loop["skipped_probes"] + skipped, np.int64)
        records = []
        while len(loop["train_queue"]) >= self.batch:
            loop, metrics = self._train(loop, self.batch)
            records.append(("train", metrics))
        if (chunk + 1) % self.fconfig.window == 0:
            fstate, window = self.end_window(loop["filter"])
            loop["filter"] = fstate
            records.append(("window", window))
        return loop, records

    def finish(self, loop: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, dict]]]:
        """Trains what is left in the train queue as one zero-weight-padded batch."""
        if len(loop["train_queue"]) == 0:
            return loop, []
        loop, metrics = self._train(loop, len(loop["train_queue"]))
        return loop, [("train", metrics)]

    def _train(self, loop: dict[str, Any], count: int) -> tuple[dict[str, Any], dict]:
        loop = dict(loop)
        loop["train_queue"], chosen = loop["train_queue"].pop(count)
        idx, weights = stream_lib.stream_batch(chosen, self.batch)
        # Probe slots: up to half for random samples, then the most uncertain, then more
        # random samples if slots remain; the rest is padding. Reserving half keeps either
        # kind from starving the other when its queue is always full.
        loop["random_queue"], random_idx = loop["random_queue"].pop(-(-self.probes // 2))
        loop["probe_queue"], unsure_idx = loop["probe_queue"].pop(self.probes - len(random_idx))
        loop["random_queue"], more = loop["random_queue"].pop(
            self.probes - len(random_idx) - len(unsure_idx)
        )
        random_idx = np.concatenate([random_idx, more])
        probe_idx = np.concatenate([random_idx, unsure_idx]).astype(np.int64)
        probe_mask = np.arange(self.probes) < len(probe_idx)
        probe_random = np.arange(self.probes) < len(random_idx)
        # Padding slots (weight 0) repeat the batch's instances, as often as needed: more
        # probe slots than the batch has instances must not index past it.
        probe_idx = np.concatenate([probe_idx, np.resize(idx, self.probes - len(probe_idx))])
        main = loop["state"]
        data = self.dataset
        main, fstate, metrics = self.step(
            main,
            loop["filter"],
            data.train_images[idx],
            data.train_labels[idx],
            weights,
            data.train_images[probe_idx],
            data.train_labels[probe_idx],
            probe_mask,
            probe_random,
            self.root,
        )
        loop.update(
            state=main, filter=fstate, trained=np.asarray(loop["trained"] + count, np.int64)
        )
        return loop, metrics

    def compilations(self) -> dict[str, int]:
        return {
            "predict": self.predict._cache_size(),
            "train": self.step._cache_size(),
            "end_window": self.end_window._cache_size(),
        }
