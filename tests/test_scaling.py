"""Scaling-law fitting (experiments/scaling.py): pure numpy, checked against known laws."""
import math

import numpy as np
import pytest

from experiments import scaling


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantiles_match_tables(df, expected):
  assert scaling.t_ppf(0.975, df) == pytest.approx(expected, abs=1e-4)
  assert scaling.t_ppf(0.025, df) == pytest.approx(-expected, abs=1e-4)
  assert scaling.t_cdf(expected, df) == pytest.approx(0.975, abs=1e-5)


def test_mean_ci():
  ci = scaling.mean_ci([1.0, 2.0, 3.0, 4.0])
  sd = math.sqrt(5 / 3)
  assert (ci.n, ci.mean, ci.std) == (4, 2.5, pytest.approx(sd))
  assert ci.half_width == pytest.approx(3.182446 * sd / 2, rel=1e-5)
  one = scaling.mean_ci([7.0])
  assert one.mean == 7.0 and math.isnan(one.half_width)


def test_levenberg_marquardt_exponential():
  x = np.linspace(0, 2, 20)
  y = 3.0 * np.exp(-1.5 * x)
  p, cost, ok = scaling.levenberg_marquardt(
      lambda p: p[0] * np.exp(-p[1] * x) - y,
      lambda p: np.stack([np.exp(-p[1] * x), -p[0] * x * np.exp(-p[1] * x)], axis=1), [1.0, 0.1])
  assert ok and cost < 1e-16 and p == pytest.approx([3.0, 1.5], abs=1e-7)


def test_power_law_exact_data():
  n = np.geomspace(1e3, 1e8, 6)
  fit = scaling.fit_power_law(n, 2.0 + 400.0 * n ** -0.3, n_boot=0)
  assert fit.converged and (fit.E, fit.A, fit.alpha) == pytest.approx((2.0, 400.0, 0.3), rel=1e-6)
  assert fit.predict([1e4])[0] == pytest.approx(2.0 + 400.0 * 1e4 ** -0.3)


E, A, ALPHA = 1.69, 406.4, 0.34  # Chinchilla-like
SIZES = np.repeat(np.geomspace(1e5, 1e9, 7), 2)  # 7 sizes x 2 seeds


def noisy_losses(seed):
  rng = np.random.default_rng(seed)
  return E + A * SIZES ** -ALPHA + rng.normal(0, 0.01, len(SIZES))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_power_law_recovers_truth_inside_bootstrap_ci(seed):
  fit = scaling.fit_power_law(SIZES, noisy_losses(seed), n_boot=500, seed=seed)
  for name, truth in (("E", E), ("A", A), ("alpha", ALPHA)):
    lo, hi = fit.ci[name]
    assert lo <= truth <= hi, (name, truth, fit.ci[name])
  assert fit.E == pytest.approx(E, abs=0.03) and fit.alpha == pytest.approx(ALPHA, abs=0.03)
  lo, hi = fit.band([1e6])
  assert lo[0] <= fit.predict([1e6])[0] <= hi[0]


def test_power_law_ci_coverage():
  # Over 40 noisy data sets the 95% intervals hold the truth about 95% of the time
  # (measured at 400 data sets x 1000 resamples: E 95%, A 93%, alpha 93%).
  hits = np.zeros(3)
  for seed in range(100, 140):
    fit = scaling.fit_power_law(SIZES, noisy_losses(seed), n_boot=200, seed=seed)
    hits += [fit.ci[k][0] <= t <= fit.ci[k][1] for k, t in (("E", E), ("A", A), ("alpha", ALPHA))]
  assert np.all(hits >= 34), hits  # >= 85%


def test_power_law_weighted():
  n = np.geomspace(1e4, 1e7, 8)
  loss = 1.0 + 10.0 * n ** -0.25
  loss[0] += 0.5  # an outlier with a huge stated error barely moves the fit
  sigma = np.full(8, 0.001)
  sigma[0] = 100.0
  fit = scaling.fit_power_law(n, loss, sigma=sigma, n_boot=0)
  assert (fit.E, fit.alpha) == pytest.approx((1.0, 0.25), abs=1e-3)


def test_power_law_needs_enough_points():
  with pytest.raises(ValueError, match="distinct N"):
    scaling.fit_power_law([1e3, 1e3, 1e4, 1e4], [3.0, 3.1, 2.0, 2.1])
  with pytest.raises(ValueError, match="positive"):
    scaling.fit_power_law([0, 1, 2, 3], [4.0, 3, 2, 1])


def test_parabola_min_and_budget_clusters():
  x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
  xs, ys, _ = scaling.parabola_min(x, 3 * (x - 0.5) ** 2 + 1)
  assert (xs, ys) == pytest.approx((0.5, 1.0))
  assert scaling.parabola_min(x, -x ** 2) is None
  labels = scaling.cluster_budgets([1e12, 1.1e12, 0.95e12, 1e13, 1.2e13, 1e14])
  assert labels.tolist() == [0, 0, 0, 1, 1, 2]


def test_compute_optimal_exponents():
  # L(N, D) = E + A/N^alpha + B/D^beta with D = C/(6N): N_opt ∝ C^(beta/(alpha+beta)).
  E, A, alpha, B, beta = 1.69, 406.4, 0.34, 410.7, 0.28
  rng = np.random.default_rng(0)
  rows = []
  for c in (1e18, 1e19, 1e20, 1e21):
    n_star = (alpha * A / (beta * B)) ** (1 / (alpha + beta)) * (c / 6) ** (beta / (alpha + beta))
    for n in np.geomspace(n_star / 6, n_star * 6, 7):
      d = c / (6 * n)
      rows.append((c * rng.uniform(0.97, 1.03), n, d, E + A * n ** -alpha + B * d ** -beta + rng.normal(0, 1e-3)))
  c, n, d, loss = map(np.array, zip(*rows))
  res = scaling.compute_optimal(c, n, d, loss, n_boot=300)
  a_true = beta / (alpha + beta)
  assert len(res.budgets) == 4 and not any(res.extrapolated)
  assert res.a == pytest.approx(a_true, abs=0.02) and res.b == pytest.approx(1 - a_true, abs=0.02)
  assert res.ci["a"][0] <= res.a <= res.ci["a"][1]
  assert res.n0 * 1e20 ** res.a == pytest.approx(res.n_opt[2], rel=0.1)


def test_compute_optimal_errors():
  with pytest.raises(ValueError, match=">= 2 budgets"):
    scaling.compute_optimal([1e12] * 3, [1, 2, 3], [3, 2, 1], [1, 0.5, 1], n_boot=0)
  with pytest.raises(ValueError, match="not convex"):  # loss falls ever faster with N: concave
    scaling.compute_optimal([1e12] * 3 + [1e14] * 3, [1, 2, 4] * 2, [4, 2, 1] * 2, [3, 2.5, 0.5, 2.5, 2.1, 0.4],
                            n_boot=0)
