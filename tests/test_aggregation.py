"""Aggregators (btard_ray.aggregation): CenteredClip against a float64 reference, and the baselines.

The reference CenteredClip below is the textbook loop, in float64 on the whole tensor, with
non-finite rows given weight 0 while 1/n still counts every row (the documented semantics).
"""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np
import pytest
import torch

from btard_ray.aggregation import (
    AGGREGATORS,
    CenteredClipResult,
    centered_clip,
    coordinate_median,
    geometric_median,
    make_aggregator,
    mean,
    trimmed_mean,
)
from btard_ray.aggregation.baselines import median_of_rows, order_statistics

cc_module = importlib.import_module("btard_ray.aggregation.centered_clip")


# --------------------------------------------------------------------------- helpers


def reference_centered_clip(
    stacked: torch.Tensor, tau: float, eps: float = 1e-6, max_iters: int = 100
) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """Straightforward float64 CenteredClip: (x, iterations, clip weights, distances)."""
    g = stacked.to(torch.float64)
    n = g.shape[0]
    finite = torch.isfinite(g).all(dim=1)
    x = torch.from_numpy(np.median(g[finite].numpy(), axis=0))
    for it in range(max_iters + 1):
        dist = torch.full((n,), math.inf, dtype=torch.float64)
        dist[finite] = torch.linalg.vector_norm(g[finite] - x, dim=1)
        clip = torch.where(dist > tau, tau / dist, 1.0)
        r = (clip[finite, None] * (g[finite] - x)).sum(dim=0) / n
        if float(torch.linalg.vector_norm(r)) <= eps or it == max_iters:
            return x, it, clip, dist
        x = x + r
    raise AssertionError("unreachable")


def recompute_at(stacked: torch.Tensor, x: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """What a verifier computes from the data and the published x: (clip weights, distances, ‖r‖)."""
    g = stacked.to(torch.float64)
    x = x.to(torch.float64)
    n = g.shape[0]
    finite = torch.isfinite(g).all(dim=1)
    dist = torch.full((n,), math.inf, dtype=torch.float64)
    dist[finite] = torch.linalg.vector_norm(g[finite] - x, dim=1)
    clip = torch.where(dist > tau, tau / dist, 1.0)
    r = (clip[finite, None] * (g[finite] - x)).sum(dim=0) / n
    return clip, dist, float(torch.linalg.vector_norm(r))


def honest_with_outliers(
    n: int, d: int, bad: int = 2, scale: float = 1000.0, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(stacked, honest mean): rows ~ N(mu, 1) per coordinate, the first ``bad`` rows ×scale.

    mu ~ N(0, 0.1²) keeps ‖x‖ small enough that rounding x to float32 (a residual of about
    6e-8·‖x‖) stays well below eps = 1e-6.
    """
    gen = torch.Generator().manual_seed(seed)
    mu = 0.1 * torch.randn(d, generator=gen, dtype=torch.float64)
    rows = mu + torch.randn(n, d, generator=gen, dtype=torch.float64)
    honest_mean = rows[bad:].mean(dim=0)
    rows[:bad] *= scale
    return rows.to(dtype), honest_mean


# --------------------------------------------------------------------------- CenteredClip


@pytest.mark.parametrize("n", [3, 4, 5, 8, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_centered_clip_matches_float64_reference(n: int, seed: int) -> None:
    d = 500
    stacked, _ = honest_with_outliers(n, d, bad=1 if n < 5 else 2, seed=seed)
    tau = 30.0  # honest rows sit ~√(2d) ≈ 32 apart: some are clipped, the outliers all are
    result = centered_clip(stacked, tau)
    ref_x, ref_it, ref_clip, ref_dist = reference_centered_clip(stacked, tau)
    assert isinstance(result, CenteredClipResult)
    assert result.converged and result.iterations <= 100
    assert ref_it < 100  # the reference converged too, so both points are ε-fixed points
    torch.testing.assert_close(result.aggregate.double(), ref_x, rtol=0, atol=1e-4)
    torch.testing.assert_close(result.clip_weights, ref_clip, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.distances, ref_dist, rtol=1e-5, atol=0)


def test_more_rows_than_the_sorting_network_handles() -> None:
    stacked, _ = honest_with_outliers(40, 300, bad=5, seed=3)
    result = centered_clip(stacked, tau=25.0)
    ref_x, ref_it, _, _ = reference_centered_clip(stacked, 25.0)
    assert result.converged and ref_it < 100
    torch.testing.assert_close(result.aggregate.double(), ref_x, rtol=0, atol=1e-4)


def test_chunking_does_not_change_the_result(monkeypatch) -> None:
    # Small chunks (with a ragged last one) through every pass, non-finite rows included.
    stacked, _ = honest_with_outliers(8, 5000, seed=19)
    stacked[3, 4321] = math.nan
    whole = centered_clip(stacked, 30.0)
    monkeypatch.setattr(cc_module, "_CPU_MEDIAN_COLS", 1500)
    monkeypatch.setattr(cc_module, "_CPU_GRAM_BYTES", 1)  # → the 1024-column minimum
    monkeypatch.setattr(cc_module, "_CPU_PASS_BYTES", 1)
    chunked = centered_clip(stacked, 30.0)
    torch.testing.assert_close(chunked.aggregate, whole.aggregate, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunked.distances, whole.distances, rtol=1e-9, atol=0)
    assert chunked.clip_weights[3] == 0 and chunked.converged
    ref_x, _, _, _ = reference_centered_clip(stacked, 30.0)
    torch.testing.assert_close(chunked.aggregate.double(), ref_x, rtol=0, atol=1e-4)


def test_huge_tau_gives_the_mean() -> None:
    stacked, _ = honest_with_outliers(8, 1000, scale=3.0, seed=4)
    result = centered_clip(stacked, tau=1e9)
    torch.testing.assert_close(result.aggregate.double(), stacked.double().mean(dim=0), rtol=0, atol=1e-3)
    # Nothing is clipped, so one step from any start lands on the mean.
    assert torch.equal(result.clip_weights, torch.ones(8, dtype=torch.float64))
    assert result.iterations == 1 and result.converged


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# (τ, eps): some honest rows clipped; only the outliers clipped (eps above the float32
# rounding floor of the shifted x); a loose eps; every row clipped (slow, many iterations).
@pytest.mark.parametrize("tau, eps", [(30.0, 1e-6), (100.0, 1e-5), (30.0, 1e-4), (1.0, 1e-6)])
def test_returned_fields_are_the_true_values_at_the_returned_point(dtype: torch.dtype, tau: float, eps: float) -> None:
    stacked, _ = honest_with_outliers(8, 700, seed=5, dtype=dtype)
    result = centered_clip(stacked, tau, eps=eps, max_iters=500)
    clip, dist, residual = recompute_at(stacked, result.aggregate, tau)
    assert result.aggregate.dtype == dtype and result.aggregate.shape == (700,)
    assert result.clip_weights.dtype == torch.float64 and result.distances.dtype == torch.float64
    assert result.converged and residual <= eps
    assert result.residual_norm == pytest.approx(residual, rel=1e-6, abs=1e-15)
    torch.testing.assert_close(result.distances, dist, rtol=1e-12, atol=0)
    torch.testing.assert_close(result.clip_weights, clip, rtol=1e-12, atol=0)
    # The aggregate check of design §4.4: Σ_i c_i⟨z, g_i − x⟩ = n⟨z, r⟩ is tiny for every z.
    z = torch.randn(700, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    s = result.clip_weights * ((stacked.double() - result.aggregate.double()) @ z)
    assert abs(float(s.sum())) <= 8 * eps * float(z.norm()) * (1 + 1e-9)


def test_true_iterations_take_over_when_the_coefficient_iteration_stops_early(monkeypatch) -> None:
    # Make the coefficient-space loop give up at once (as float error would): the true
    # passes must still deliver a point whose real residual is within eps.
    monkeypatch.setattr(cc_module, "_SURROGATE_TARGET", 1e12)
    stacked, _ = honest_with_outliers(8, 400, seed=6)
    result = centered_clip(stacked, 30.0)
    _, _, residual = recompute_at(stacked, result.aggregate, 30.0)
    ref_x, _, _, _ = reference_centered_clip(stacked, 30.0)
    assert result.converged and residual <= 1e-6 and result.iterations >= 3
    assert result.residual_norm == pytest.approx(residual, rel=1e-6)
    torch.testing.assert_close(result.aggregate.double(), ref_x, rtol=0, atol=1e-4)


def test_max_iters_stops_and_reports_not_converged() -> None:
    stacked, _ = honest_with_outliers(8, 700, seed=7)
    result = centered_clip(stacked, tau=1.0, max_iters=3)  # everything clipped: slow
    ref_x, ref_it, _, _ = reference_centered_clip(stacked, 1.0, max_iters=3)
    _, _, residual = recompute_at(stacked, result.aggregate, 1.0)
    assert ref_it == 3 and result.iterations == 3 and not result.converged
    assert result.residual_norm == pytest.approx(residual, rel=1e-6) and residual > 1e-6
    torch.testing.assert_close(result.aggregate.double(), ref_x, rtol=0, atol=1e-4)


def test_unreachable_eps_stops_early_with_the_truth(monkeypatch) -> None:
    # float32 rounding of a large x moves it by ~6e-8·‖x‖ ≈ 1e-1, far above eps = 1e-12.
    stacked, _ = honest_with_outliers(8, 500, seed=8)
    stacked = stacked * 1e5
    true_iterations = []
    distance_pass = cc_module._distance_pass
    monkeypatch.setattr(cc_module, "_distance_pass", lambda *a: true_iterations.append(1) or distance_pass(*a))
    result = centered_clip(stacked, tau=3e6, eps=1e-12, max_iters=100)
    _, _, residual = recompute_at(stacked, result.aggregate, 3e6)
    assert not result.converged and result.iterations < 100
    assert result.residual_norm == pytest.approx(residual, rel=1e-6)
    # It gave up once the residual stopped falling, not after spending all 100 iterations.
    assert 1 <= len(true_iterations) <= 4


def test_max_iters_zero_returns_the_median_start() -> None:
    stacked, _ = honest_with_outliers(6, 300, seed=10)  # even n: mean of the two middle values
    result = centered_clip(stacked, tau=30.0, max_iters=0)
    expected = np.median(stacked.numpy().astype(np.float64), axis=0)
    torch.testing.assert_close(result.aggregate.double(), torch.from_numpy(expected), rtol=1e-7, atol=1e-7)
    assert result.iterations == 0


def test_nan_and_inf_rows_get_weight_zero_and_do_not_move_the_result() -> None:
    stacked, _ = honest_with_outliers(8, 600, seed=11)
    poisoned = stacked.clone()
    poisoned[2] = math.nan
    poisoned[5, 17] = math.inf
    poisoned[6, 3] = -math.inf
    result = centered_clip(poisoned, 30.0)
    bad = torch.tensor([2, 5, 6])
    good = torch.tensor([0, 1, 3, 4, 7])
    assert torch.all(result.clip_weights[bad] == 0) and torch.all(torch.isinf(result.distances[bad]))
    assert torch.all(result.clip_weights[good] > 0) and torch.all(torch.isfinite(result.distances[good]))
    assert torch.isfinite(result.aggregate).all() and result.converged
    # Same semantics as the reference (weight 0, 1/n over all 8 rows) ...
    ref_x, _, ref_clip, _ = reference_centered_clip(poisoned, 30.0)
    torch.testing.assert_close(result.aggregate.double(), ref_x, rtol=0, atol=1e-4)
    torch.testing.assert_close(result.clip_weights, ref_clip, rtol=1e-4, atol=1e-6)
    _, _, residual = recompute_at(poisoned, result.aggregate, 30.0)
    assert residual <= 1e-6 and result.residual_norm == pytest.approx(residual, rel=1e-6)
    # ... the same fixed point as CenteredClip of the finite rows alone (whose 1/m steps and
    # residual differ by the factor m/n, so only up to the stopping tolerance) ...
    alone = centered_clip(stacked[good], 30.0)
    torch.testing.assert_close(result.aggregate, alone.aggregate, rtol=0, atol=1e-4)
    # ... and what the bad rows hold beyond being non-finite changes nothing at all.
    other = stacked.clone()
    other[2, 0] = -math.inf
    other[5] = math.nan
    other[6, 100] = math.nan
    assert torch.equal(centered_clip(other, 30.0).aggregate, result.aggregate)


def test_one_step_with_nan_rows_is_m_over_n_of_the_finite_step() -> None:
    # The documented 1/n: a non-finite row counts in n but contributes nothing.
    stacked, _ = honest_with_outliers(8, 300, seed=18)
    stacked[4] = math.nan
    result = centered_clip(stacked, 30.0, max_iters=1)
    ref_x, ref_it, _, _ = reference_centered_clip(stacked, 30.0, max_iters=1)
    assert result.iterations == ref_it == 1
    torch.testing.assert_close(result.aggregate.double(), ref_x, rtol=0, atol=1e-5)


def test_all_rows_non_finite_raises() -> None:
    stacked = torch.randn(4, 50)
    stacked[0, 1] = math.nan
    stacked[1] = math.inf
    stacked[2, 7] = -math.inf
    stacked[3, 49] = math.nan
    with pytest.raises(ValueError, match="every row contains NaN or Inf"):
        centered_clip(stacked, 1.0)


def test_float64_rows_too_large_to_square_are_infinitely_far() -> None:
    stacked, _ = honest_with_outliers(6, 200, seed=12, dtype=torch.float64)
    stacked[1] = 1e300  # finite, but ‖g − x‖² overflows float64
    result = centered_clip(stacked, 30.0)
    assert result.clip_weights[1] == 0 and math.isinf(float(result.distances[1]))
    alone = centered_clip(stacked[[0, 2, 3, 4, 5]], 30.0)
    torch.testing.assert_close(result.aggregate, alone.aggregate, rtol=0, atol=1e-4)


@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_outliers_move_centered_clip_far_less_than_the_mean(scale: float) -> None:
    stacked, honest_mean = honest_with_outliers(8, 1000, bad=2, scale=scale, seed=13)
    cc_error = float(torch.linalg.vector_norm(centered_clip(stacked, 50.0).aggregate.double() - honest_mean))
    mean_error = float(torch.linalg.vector_norm(mean(stacked).double() - honest_mean))
    honest_spread = math.sqrt(1000)  # distance of one honest row from the honest mean
    assert cc_error < 0.01 * mean_error
    # The two clipped rows can pull by at most 2τ/n each step in total: bounded, not ∝ scale.
    assert cc_error < honest_spread


def test_dtypes_are_kept() -> None:
    stacked, _ = honest_with_outliers(5, 64, seed=14, dtype=torch.float64)
    assert centered_clip(stacked, 30.0).aggregate.dtype == torch.float64
    half = stacked.to(torch.bfloat16)
    result = centered_clip(half, 30.0, eps=1e-2)
    assert result.aggregate.dtype == torch.bfloat16 and result.clip_weights.dtype == torch.float64
    _, _, residual = recompute_at(half, result.aggregate, 30.0)
    assert result.residual_norm == pytest.approx(residual, rel=1e-6)


def test_single_row_and_empty_part() -> None:
    row = torch.randn(1, 33)
    result = centered_clip(row, 1.0)
    assert torch.equal(result.aggregate, row[0]) and result.converged and result.iterations == 0
    empty = centered_clip(torch.zeros(4, 0), 1.0)
    assert empty.aggregate.shape == (0,) and empty.converged and empty.residual_norm == 0.0


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"tau": 0.0}, "tau"),
        ({"tau": -1.0}, "tau"),
        ({"tau": math.nan}, "tau"),
        ({"tau": True}, "tau"),
        ({"tau": 1.0, "eps": -1e-6}, "eps"),
        ({"tau": 1.0, "max_iters": -1}, "max_iters"),
        ({"tau": 1.0, "max_iters": 2.5}, "max_iters"),
    ],
)
def test_centered_clip_rejects_bad_parameters(kwargs: dict, culprit: str) -> None:
    with pytest.raises(ValueError, match=culprit):
        centered_clip(torch.zeros(3, 4), **kwargs)


def test_centered_clip_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        centered_clip(torch.zeros(4), 1.0)
    with pytest.raises(TypeError, match="floating"):
        centered_clip(torch.zeros(3, 4, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match="at least one row"):
        centered_clip(torch.zeros(0, 4), 1.0)


# --------------------------------------------------------------------------- order statistics


@pytest.mark.parametrize("m", range(1, 17))
def test_sorting_network_sorts_every_zero_one_input(m: int) -> None:
    # The 0-1 principle: a comparator network sorts every input iff it sorts all 2^m 0/1 inputs.
    columns = torch.tensor(list(itertools.product([0.0, 1.0], repeat=m))).T.contiguous()
    ordered = torch.stack(order_statistics(columns, range(m)))
    assert torch.equal(ordered, torch.sort(columns, dim=0).values)


@pytest.mark.parametrize("m", [1, 2, 3, 7, 8, 9, 31, 32, 33, 40])
def test_order_statistics_match_sort_with_ties(m: int) -> None:
    block = torch.randint(-3, 4, (m, 2000)).float()
    ranks = sorted({0, m // 2, m - 1, (m - 1) // 3})
    expected = torch.sort(block, dim=0).values[ranks]
    assert torch.equal(torch.stack(order_statistics(block, ranks)), expected)


# --------------------------------------------------------------------------- baselines


def test_mean_is_the_plain_average_and_lets_nan_through() -> None:
    stacked = torch.randn(5, 100)
    torch.testing.assert_close(mean(stacked), stacked.mean(dim=0))
    stacked[3, 10] = math.nan
    assert torch.isnan(mean(stacked)[10]) and not torch.isnan(mean(stacked)[11])


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8, 9, 16, 33, 40])
def test_coordinate_median_matches_numpy(m: int) -> None:
    stacked = torch.randn(m, 3000, generator=torch.Generator().manual_seed(m))
    expected = np.median(stacked.numpy().astype(np.float64), axis=0)
    torch.testing.assert_close(coordinate_median(stacked).double(), torch.from_numpy(expected), rtol=1e-6, atol=1e-7)


def test_median_of_rows_spans_several_chunks_and_does_not_overflow() -> None:
    stacked = torch.randn(6, 200_000, generator=torch.Generator().manual_seed(2))
    expected = np.median(stacked.numpy().astype(np.float64), axis=0)
    torch.testing.assert_close(median_of_rows(stacked).double(), torch.from_numpy(expected), rtol=1e-6, atol=1e-7)
    big = torch.full((2, 3), 3e38)
    assert torch.isfinite(median_of_rows(big)).all()


def test_robust_baselines_drop_non_finite_rows() -> None:
    stacked = torch.randn(7, 400, generator=torch.Generator().manual_seed(3))
    poisoned = stacked.clone()
    poisoned[1, 5] = math.nan
    poisoned[4] = math.inf
    finite = stacked[[0, 2, 3, 5, 6]]
    assert torch.equal(coordinate_median(poisoned), coordinate_median(finite))
    assert torch.equal(trimmed_mean(poisoned, 0.2), trimmed_mean(finite, 0.2))
    assert torch.equal(geometric_median(poisoned), geometric_median(finite))
    for fn in (coordinate_median, trimmed_mean, geometric_median):
        with pytest.raises(ValueError, match="every row"):
            fn(torch.full((3, 4), math.nan))


@pytest.mark.parametrize("m", [1, 3, 5, 8, 10, 16, 40])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.2, 0.25, 0.49])
def test_trimmed_mean_matches_numpy(m: int, ratio: float) -> None:
    stacked = torch.randn(m, 1500, generator=torch.Generator().manual_seed(m))
    k = math.floor(ratio * m)
    values = np.sort(stacked.numpy().astype(np.float64), axis=0)[k : m - k]
    expected = torch.from_numpy(values.mean(axis=0))
    torch.testing.assert_close(trimmed_mean(stacked, ratio).double(), expected, rtol=1e-6, atol=1e-6)


def test_trimmed_mean_rejects_bad_ratio() -> None:
    for ratio in (-0.1, 0.5, 0.7, math.nan):
        with pytest.raises(ValueError, match="trim_ratio"):
            trimmed_mean(torch.zeros(4, 3), ratio)


def _sum_of_distances(stacked: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(stacked.double() - y.double(), dim=1).sum())


def test_geometric_median_minimises_the_sum_of_distances() -> None:
    stacked, _ = honest_with_outliers(9, 200, bad=3, scale=100.0, seed=15)
    y = geometric_median(stacked, eps=1e-7, max_iters=1000)
    best = _sum_of_distances(stacked, y)
    assert best < _sum_of_distances(stacked, mean(stacked))
    assert best < _sum_of_distances(stacked, coordinate_median(stacked))
    # First-order optimality: ∇ Σ_i ‖y − g_i‖ = Σ_i (y − g_i)/‖y − g_i‖, a sum of 9 unit
    # vectors, vanishes at the minimiser (up to the float32 rounding of y).
    diff = y.double() - stacked.double()
    gradient = (diff / torch.linalg.vector_norm(diff, dim=1, keepdim=True)).sum(dim=0)
    assert float(torch.linalg.vector_norm(gradient)) < 1e-3
    # And moving against that gradient does not help.
    assert _sum_of_distances(stacked, y.double() - 1e-3 * gradient) >= best - 1e-9 * best


def test_geometric_median_of_collinear_points_is_the_middle_one() -> None:
    stacked = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [100.0, 0.0]])
    torch.testing.assert_close(geometric_median(stacked, max_iters=2000), torch.tensor([2.0, 0.0]), atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- registry


def test_registry_names() -> None:
    assert set(AGGREGATORS) == {"centered_clip", "mean", "coordinate_median", "trimmed_mean", "geometric_median"}


@pytest.mark.parametrize(
    "name, params",
    [
        ("centered_clip", {"tau": 30.0}),
        ("mean", {}),
        ("coordinate_median", {}),
        ("trimmed_mean", {"trim_ratio": 0.25}),
        ("geometric_median", {"eps": 1e-5, "max_iters": 50}),
    ],
)
def test_make_aggregator_gives_stacked_to_aggregate(name: str, params: dict) -> None:
    stacked, _ = honest_with_outliers(8, 300, seed=17)
    fn = make_aggregator(name, **params)
    out = fn(stacked)
    assert isinstance(out, torch.Tensor) and out.shape == (300,) and out.dtype == torch.float32
    direct = AGGREGATORS[name](stacked, **params)
    assert torch.equal(out, direct.aggregate if name == "centered_clip" else direct)
    assert name in repr(fn)


def test_make_aggregator_errors_name_the_culprit() -> None:
    with pytest.raises(ValueError, match=r"unknown aggregator 'krum'; known: centered_clip, coordinate_median"):
        make_aggregator("krum")
    with pytest.raises(ValueError, match="unknown parameter.*tua"):
        make_aggregator("centered_clip", tua=1.0)
    with pytest.raises(ValueError, match="unknown parameter.*trim_ratio"):
        make_aggregator("mean", trim_ratio=0.1)
    with pytest.raises(ValueError, match="needs parameter.*tau"):
        make_aggregator("centered_clip")
    with pytest.raises(ValueError, match="tau"):
        make_aggregator("centered_clip", tau=-1.0)
    with pytest.raises(ValueError, match="trim_ratio"):
        make_aggregator("trimmed_mean", trim_ratio=0.5)
    with pytest.raises(ValueError, match="max_iters"):
        make_aggregator("geometric_median", max_iters=-3)


def test_the_job_config_params_are_accepted() -> None:
    config = pytest.importorskip("btard_ray.config")
    for name in AGGREGATORS:
        cfg = config.AggregatorConfig(name=name)
        fn = make_aggregator(cfg.name, **cfg.params())
        assert fn(torch.randn(5, 20)).shape == (20,)
