"""Tests of the data-selection baselines of issue #18 (random, oracle, OHEM,
Selective-Backprop, InfoBatch) on the selection interface: each rule against a
hand-worked chunk, its counted MACs against a hand-worked value, and one short run
through ``edgefilter.training.loop``.

Hand-worked MACs of the slim LeNet with 10 classes on a 28x28x1 instance: conv
3x3x1->6 on 26x26: 36,504; conv 3x3x6->16 on 11x11: 104,544; FC 400->120: 48,000;
FC 120->10: 1,200. Forward 190,248.
"""

from edgefilter.training import config as config_lib
from edgefilter.training import loop

SLIM10_FORWARD = 190_248
M = 32  # Chunk size of the end-to-end runs: tiny_dataset's 320 instances are 10 chunks.


def _run(tmp_path, tiny_dataset, **overrides):
    flags = dict(
        model="lenet_slim",
        dataset="fashion_mnist",
        steps=10,
        batch_size=M,
        r_set=0.25,
        block_chunks=2,
        checkpoint_every_steps=100,
        log_every_steps=5,
        eval_batch_size=100,
    )
    flags.update(overrides)
    config = config_lib.from_flags(flags)
    return loop.train_and_evaluate(
        config, str(tmp_path / config.method), dataset=tiny_dataset, show_progress=False
    )


def test_random_trains_round_r_set_m_of_each_chunk_and_counts_them(tmp_path, tiny_dataset):
    summary = _run(tmp_path, tiny_dataset, method="random")
    kept = round(0.25 * M)  # 8 of each chunk of 32, one main step per chunk.
    assert summary["steps"] == 10 and summary["instances_trained"] == 10 * kept
    breakdown = summary["compute"]["breakdown"]
    assert breakdown["main_forward"] == 10 * kept * SLIM10_FORWARD
    assert breakdown["selection_forward"] == 0 and breakdown["filter_inference"] == 0
