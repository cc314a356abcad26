"""Tests for backends.xla_cpu.channel_fold: folded per-channel sums equal NumPy's."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefilter.backends.xla_cpu import channel_fold


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9),
        elements=st.floats(-4, 4, width=32),
    )
)
def test_channel_sum_is_numpys_sum_over_all_but_the_last_axis(x):
    want = x.reshape(-1, x.shape[-1]).astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(channel_fold.channel_sum(x), want, rtol=1e-5, atol=1e-4)


@given(rows=st.integers(1, 5000), channels=st.integers(1, 400))
def test_group_count_divides_the_rows_and_fits_a_wide_row(rows, channels):
    g = channel_fold.group_count(rows, channels)
    assert rows % g == 0 and g >= 1
    assert g == 1 or g * channels <= channel_fold.WIDE_ROW
    # Largest such g: no bigger divisor fits.
    assert not any(rows % h == 0 for h in range(g + 1, channel_fold.WIDE_ROW // channels + 1))


def test_fold_and_tile_lay_out_channels_along_a_folded_row():
    x = np.arange(2 * 4 * 4 * 8, dtype=np.float32).reshape(2, 4, 4, 8)
    folded, groups = channel_fold.fold(x)
    assert folded.shape == (1, 256) and groups == 32
    scale = np.arange(8, dtype=np.float32)
    y = (folded * channel_fold.tile(scale, groups)).reshape(x.shape)
    np.testing.assert_array_equal(y, x * scale)


@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (128, 8, 8, 16), (2, 3, 3, 300), (1, 1, 1, 4)])
def test_channel_sum_of_error_map_shapes(shape):
    # A prime row count, one that divides, a channel count past the fold, a single row.
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    want = np.abs(x.astype(np.float64)).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(channel_fold.channel_sum(np.abs(x)), want, rtol=1e-5)
