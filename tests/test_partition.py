"""The contiguous partition of a flat gradient among n peers (btard_ray.partition)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from btard_ray.partition import flatten_grads, join, part_bounds, part_sizes, split, unflatten_like

lengths = st.integers(min_value=0, max_value=5000)
counts = st.integers(min_value=1, max_value=300)


@given(length=lengths, n=counts)
def test_sizes_count_sum_and_balance(length: int, n: int) -> None:
    sizes = part_sizes(length, n)
    assert len(sizes) == n
    assert sum(sizes) == length
    assert max(sizes) - min(sizes) <= 1
    # The larger parts come first: the first length % n parts hold one extra element.
    assert sizes == sorted(sizes, reverse=True)
    assert sum(1 for s in sizes if s == length // n + 1) == (length % n if length % n else 0)


@given(length=lengths, n=counts)
def test_bounds_tile_the_range(length: int, n: int) -> None:
    bounds = part_bounds(length, n)
    assert len(bounds) == n
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    for (_, end), (start, _) in zip(bounds, bounds[1:]):
        assert end == start  # no gap, no overlap
    assert [end - start for start, end in bounds] == part_sizes(length, n)


@settings(max_examples=200)
@given(length=lengths, n=counts, seed=st.integers(0, 2**31 - 1))
def test_split_then_join_is_identity(length: int, n: int, seed: int) -> None:
    flat = torch.randn(length, generator=torch.Generator().manual_seed(seed))
    parts = split(flat, n)
    assert len(parts) == n
    assert [p.numel() for p in parts] == part_sizes(length, n)
    for part, (start, end) in zip(parts, part_bounds(length, n)):
        assert torch.equal(part, flat[start:end])
    assert torch.equal(join(parts), flat)


def test_split_returns_views() -> None:
    flat = torch.arange(10.0)
    parts = split(flat, 3)
    parts[1][0] = -1.0
    assert flat[4] == -1.0  # part 1 is [4, 7): sizes 4, 3, 3


def test_split_keeps_dtype_and_handles_more_parts_than_elements() -> None:
    flat = torch.arange(3, dtype=torch.float64)
    parts = split(flat, 5)
    assert [p.numel() for p in parts] == [1, 1, 1, 0, 0]
    assert all(p.dtype == torch.float64 for p in parts)
    assert torch.equal(join(parts), flat)


@pytest.mark.parametrize("length, n", [(10, 0), (10, -1), (-1, 3)])
def test_bad_arguments_raise(length: int, n: int) -> None:
    with pytest.raises(ValueError, match="n must be|length must be"):
        part_sizes(length, n)


def test_split_rejects_non_vector_and_join_rejects_empty() -> None:
    with pytest.raises(ValueError, match="1-D"):
        split(torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="at least one part"):
        join([])
    with pytest.raises(ValueError, match="1-D"):
        join([torch.zeros(2, 2)])


def test_flatten_then_unflatten_round_trips() -> None:
    like = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 1, 3), torch.randn(())]
    flat = flatten_grads(like)
    assert flat.shape == (12 + 5 + 6 + 1,)
    assert torch.equal(flat[:12], like[0].reshape(-1))
    back = unflatten_like(flat, like)
    assert [b.shape for b in back] == [t.shape for t in like]
    assert all(torch.equal(b, t) for b, t in zip(back, like))


def test_flatten_and_unflatten_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        flatten_grads([])
    with pytest.raises(ValueError, match="tensor 1"):
        flatten_grads([torch.zeros(2), torch.zeros(2, dtype=torch.float64)])
    with pytest.raises(ValueError, match="need 6"):
        unflatten_like(torch.zeros(5), [torch.zeros(2, 3)])
