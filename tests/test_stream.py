"""Tests of edgefilter.stream: the seeded stream, static batches and the bounded FIFO."""

import collections

import chex
import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefilter import data as data_lib
from edgefilter.training import stream as stream_lib


def test_stream_covers_every_instance_once_per_epoch_across_chunk_boundaries():
    stream = stream_lib.Stream(seed=3, num_train=10, length=25)
    chunks = [stream.indices(s, 4) for s in range(0, 24, 4)]
    flat = np.concatenate(chunks)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    np.testing.assert_array_equal(flat[:10], data_lib.epoch_permutation(3, 0, 10))
    assert not np.array_equal(flat[:10], flat[10:20])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    num_train=st.integers(1, 12),
    start=st.integers(0, 40),
    cuts=st.lists(st.integers(0, 9), max_size=5),
)
def test_stream_indices_do_not_depend_on_how_the_stream_is_chunked(seed, num_train, start, cuts):
    stream = stream_lib.Stream(seed, num_train, length=100)
    total = sum(cuts)
    pieces, position = [], start
    for count in cuts:
        pieces.append(stream.indices(position, count))
        position += count
    whole = stream.indices(start, total)
    np.testing.assert_array_equal(np.concatenate([whole[:0], *pieces]), whole)
    # Position s is instance permutation(seed, s // n)[s % n] (the class docstring).
    expected = [
        data_lib.epoch_permutation(seed, s // num_train, num_train)[s % num_train]
        for s in range(start, start + total)
    ]
    np.testing.assert_array_equal(whole, np.asarray(expected, np.int64))


def test_stream_batch_pads_with_zero_weight_repeats():
    idx, weights = stream_lib.stream_batch(np.array([7, 8, 9]), 5)
    np.testing.assert_array_equal(idx, [7, 8, 9, 7, 8])
    np.testing.assert_array_equal(weights, [1, 1, 1, 0, 0])


def test_stream_batch_of_a_full_chunk_is_unchanged_with_unit_weights():
    idx, weights = stream_lib.stream_batch(np.array([4, 1, 3, 0]), 4)
    np.testing.assert_array_equal(idx, [4, 1, 3, 0])
    np.testing.assert_array_equal(weights, np.ones(4, np.float32))
    assert weights.dtype == np.float32


def test_queue_is_fifo_and_a_pytree():
    queue = stream_lib.Queue.empty(5)
    assert len(queue) == 0
    chex.assert_shape(queue.items, (5,))
    queue, overflow = queue.push(np.array([10, 11]))
    assert overflow == 0
    queue, overflow = queue.push(np.array([12]))
    assert overflow == 0 and len(queue) == 3
    queue, out = queue.pop(2)
    np.testing.assert_array_equal(out, [10, 11])
    queue, _ = queue.push(np.array([13, 14]))
    queue, out = queue.pop(3)
    np.testing.assert_array_equal(out, [12, 13, 14])
    assert len(queue) == 0
    leaves = jax.tree.leaves(queue)
    assert len(leaves) == 2  # items and count: checkpointable with the loop state.


def test_queue_push_when_full_returns_the_overflow_count_and_keeps_the_oldest():
    queue, overflow = stream_lib.Queue.empty(4).push(np.array([1, 2, 3]))
    assert overflow == 0
    queue, overflow = queue.push(np.array([4, 5, 6]))
    assert overflow == 2 and len(queue) == 4
    queue, overflow = queue.push(np.array([7]))
    assert overflow == 1 and len(queue) == 4
    _, out = queue.pop(4)
    np.testing.assert_array_equal(out, [1, 2, 3, 4])


def test_queue_pop_of_more_than_present_returns_what_there_is():
    queue, _ = stream_lib.Queue.empty(4).push(np.array([8, 9]))
    queue, out = queue.pop(3)
    np.testing.assert_array_equal(out, [8, 9])
    assert out.dtype == np.int64 and len(queue) == 0
    queue, out = queue.pop(2)
    assert out.shape == (0,) and len(queue) == 0


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.lists(st.integers(0, 10**6), max_size=7)),
        st.tuples(st.just("pop"), st.integers(0, 8)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 8), ops=_OPS)
def test_queue_matches_a_bounded_deque(capacity, ops):
    queue = stream_lib.Queue.empty(capacity)
    model = collections.deque()
    for op, arg in ops:
        before_items, before_count = queue.items.copy(), int(queue.count)
        if op == "push":
            fits = arg[: capacity - len(model)]
            model.extend(fits)
            new, overflow = queue.push(np.asarray(arg, np.int64))
            assert overflow == len(arg) - len(fits)
        else:
            expected = [model.popleft() for _ in range(min(arg, len(model)))]
            new, out = queue.pop(arg)
            np.testing.assert_array_equal(out, np.asarray(expected, np.int64))
        # Functional: the old queue is untouched.
        np.testing.assert_array_equal(queue.items, before_items)
        assert int(queue.count) == before_count
        queue = new
        assert len(queue) == len(model)
        np.testing.assert_array_equal(queue.items[: len(queue)], np.asarray(model, np.int64))
        chex.assert_shape(queue.items, (capacity,))
