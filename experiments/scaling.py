"""Scaling-law fits in pure numpy: L(N) = E + A * N^-alpha, IsoFLOP optima, bootstrap CIs.

Nothing here reads files or plots; experiments/compare.py feeds it numbers.

* `fit_power_law(N, L)`: Levenberg-Marquardt on (E, log A', alpha) with N scaled by
  its geometric mean (so A' is O(loss) and the problem is well conditioned), started
  from the best of a grid over alpha where E and A' are a linear least-squares solve.
* `bootstrap_power_law`: residual bootstrap (the N values are a fixed design, usually
  too few distinct sizes to resample pairs), residuals inflated by sqrt(n / (n - 3)).
* `compute_optimal(C, N, D, L)`: per compute budget a parabola of L in log N (and in
  log D) gives N_opt(C), D_opt(C); a line in log-log gives N_opt ∝ C^a, D_opt ∝ C^b.
* `t_ppf`, `mean_ci`: Student-t quantiles (no scipy) for seed confidence intervals.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

CI_LEVEL = 0.95


# ---------------------------------------------------------------- Student t

def _t_pdf(t: np.ndarray, df: float) -> np.ndarray:
  log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
  return np.exp(log_c - (df + 1) / 2 * np.log1p(t * t / df))


def t_cdf(t: float, df: float) -> float:
  """P(T <= t) by Simpson's rule on [0, |t|] (the pdf is smooth; 4000 panels is ~1e-12)."""
  x = np.linspace(0.0, abs(t), 4001)
  y = _t_pdf(x, df)
  h = x[1] - x[0]
  area = h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())
  return 0.5 + math.copysign(area, t)


def t_ppf(q: float, df: float) -> float:
  """Inverse of t_cdf by bisection: t_ppf(0.975, 4) = 2.776..."""
  if not 0 < q < 1:
    raise ValueError(f"quantile {q} must be in (0, 1)")
  if q < 0.5:
    return -t_ppf(1 - q, df)
  lo, hi = 0.0, 1.0
  while t_cdf(hi, df) < q:
    hi *= 2
  for _ in range(80):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
  return (lo + hi) / 2


@dataclasses.dataclass(frozen=True)
class MeanCI:
  n: int
  mean: float
  std: float  # sample std (ddof=1); nan for n == 1
  half_width: float  # t_{0.975, n-1} * std / sqrt(n); nan for n == 1

  @property
  def low(self) -> float:
    return self.mean - self.half_width

  @property
  def high(self) -> float:
    return self.mean + self.half_width


def mean_ci(values, level: float = CI_LEVEL) -> MeanCI:
  v = np.asarray(values, dtype=float)
  n = len(v)
  if n == 0:
    raise ValueError("mean_ci of no values")
  if n == 1:
    return MeanCI(1, float(v[0]), math.nan, math.nan)
  std = float(v.std(ddof=1))
  return MeanCI(n, float(v.mean()), std, t_ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))


# ---------------------------------------------------------------- least squares

def levenberg_marquardt(residual: Callable[[np.ndarray], np.ndarray],
                        jacobian: Callable[[np.ndarray], np.ndarray],
                        p0, max_iter: int = 200, tol: float = 1e-12) -> tuple[np.ndarray, float, bool]:
  """Minimise sum(residual(p)**2); returns (p, cost, converged)."""
  p = np.asarray(p0, dtype=float)
  r = residual(p)
  cost = float(r @ r)
  lam = 1e-3
  for _ in range(max_iter):
    j = jacobian(p)
    h, g = j.T @ j, j.T @ r
    damp = lam * np.diag(np.maximum(np.diag(h), 1e-12))
    try:
      step = np.linalg.solve(h + damp, -g)
    except np.linalg.LinAlgError:
      lam *= 10
      continue
    p_new = p + step
    r_new = residual(p_new)
    cost_new = float(r_new @ r_new)
    if np.isfinite(cost_new) and cost_new <= cost:
      done = cost - cost_new <= tol * max(cost, 1e-30) or np.abs(step).max() < 1e-12
      p, r, cost = p_new, r_new, cost_new
      lam = max(lam / 3, 1e-12)
      if done:
        return p, cost, True
    else:
      lam *= 4
      if lam > 1e14:  # no downhill step left: at a minimum up to float precision
        return p, cost, True
  return p, cost, False


# ---------------------------------------------------------------- L(N) = E + A N^-alpha

@dataclasses.dataclass
class PowerLawFit:
  """L(N) = E + A * N^-alpha; `ci` maps 'E', 'A', 'alpha' to bootstrap (low, high)."""
  E: float
  A: float
  alpha: float
  rss: float
  n: int
  converged: bool
  ci: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
  samples: np.ndarray | None = None  # bootstrap (E, A, alpha) rows
  boot_unconverged: int = 0  # bootstrap fits still moving at max_iter (kept: they show a flat valley)

  def predict(self, n) -> np.ndarray:
    return self.E + self.A * np.asarray(n, dtype=float) ** -self.alpha

  def band(self, n, level: float = CI_LEVEL) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise bootstrap band of the fitted curve."""
    if self.samples is None or not len(self.samples):
      return None
    n = np.asarray(n, dtype=float)
    curves = self.samples[:, :1] + self.samples[:, 1:2] * n[None, :] ** -self.samples[:, 2:3]
    q = (1 - level) / 2
    return np.quantile(curves, q, axis=0), np.quantile(curves, 1 - q, axis=0)

  def as_dict(self) -> dict:
    return {"E": self.E, "A": self.A, "alpha": self.alpha, "rss": self.rss, "n": self.n,
            "converged": self.converged, "ci95": {k: list(v) for k, v in self.ci.items()},
            "bootstrap": 0 if self.samples is None else len(self.samples),
            "bootstrap_unconverged": self.boot_unconverged}


def _power_law_problem(x: np.ndarray, y: np.ndarray, w: np.ndarray):
  def f(p):
    return p[0] + np.exp(p[1]) * x ** -p[2]

  def residual(p):
    return (f(p) - y) * w

  def jacobian(p):
    t = np.exp(p[1]) * x ** -p[2]
    return np.stack([np.ones_like(x), t, -t * np.log(x)], axis=1) * w[:, None]

  return residual, jacobian


def _grid_start(x, y, w) -> np.ndarray:
  """For fixed alpha the model is linear in (E, A'): pick the alpha with the least RSS."""
  best = None
  for alpha in np.geomspace(0.01, 4.0, 80):
    design = np.stack([np.ones_like(x), x ** -alpha], axis=1) * w[:, None]
    coef, *_ = np.linalg.lstsq(design, y * w, rcond=None)
    if coef[1] <= 0:
      continue
    rss = float(np.sum((design @ coef - y * w) ** 2))
    if best is None or rss < best[0]:
      best = (rss, np.array([coef[0], math.log(coef[1]), alpha]))
  if best is None:  # loss does not fall with N: start flat, LM reports what it can
    return np.array([float(np.min(y)), math.log(max(float(np.ptp(y)), 1e-6)), 0.5])
  return best[1]


def _fit_scaled(x, y, w, start=None):
  residual, jacobian = _power_law_problem(x, y, w)
  p0 = _grid_start(x, y, w) if start is None else start
  return levenberg_marquardt(residual, jacobian, p0)


def fit_power_law(n, loss, sigma=None, n_boot: int = 1000, seed: int = 0,
                  level: float = CI_LEVEL) -> PowerLawFit:
  """Fit L(N) = E + A N^-alpha (weighted by 1/sigma if given); bootstrap CIs if n_boot > 0."""
  n = np.asarray(n, dtype=float)
  y = np.asarray(loss, dtype=float)
  if n.shape != y.shape or n.ndim != 1:
    raise ValueError("N and L must be 1-d arrays of equal length")
  if len(np.unique(n)) < 3 or len(n) < 4:
    raise ValueError(f"a 3-parameter power law needs >= 3 distinct N and >= 4 points, got "
                     f"{len(np.unique(n))} distinct N in {len(n)} points")
  if np.any(n <= 0):
    raise ValueError("N must be positive")
  w = np.ones_like(y) if sigma is None else 1.0 / np.maximum(np.asarray(sigma, dtype=float), 1e-12)
  n_ref = float(np.exp(np.mean(np.log(n))))
  x = n / n_ref
  p, cost, ok = _fit_scaled(x, y, w)
  fit = PowerLawFit(E=float(p[0]), A=float(math.exp(p[1]) * n_ref ** p[2]), alpha=float(p[2]),
                    rss=cost, n=len(n), converged=ok)
  if n_boot > 0:
    fit.samples, fit.boot_unconverged = _bootstrap(x, y, w, p, n_ref, n_boot, seed)
    fit.ci = _percentile_ci(fit.samples, ("E", "A", "alpha"), _expanded_level(level, len(y) - 3))
  return fit


def _expanded_level(level: float, dof: int) -> float:
  """Percentile intervals act like z-intervals, too narrow with few residual degrees of
  freedom; take the bootstrap quantile whose z equals t_{dof} (Hesterberg's expanded
  percentile interval). With 7 sizes x 2 seeds this lifts coverage from ~90% to 93-95%."""
  z = t_ppf(0.5 + level / 2, max(dof, 1))
  return math.erf(z / math.sqrt(2))


def _bootstrap(x, y, w, p, n_ref, n_boot, seed) -> np.ndarray:
  rng = np.random.default_rng(seed)
  fitted = p[0] + np.exp(p[1]) * x ** -p[2]
  resid = (y - fitted) * w
  # Fitted residuals are smaller than the noise, most at high-leverage points: undo that
  # with r_i / sqrt(1 - h_ii) (h: the hat matrix of the linearised fit).
  _, jacobian = _power_law_problem(x, y, w)
  j = jacobian(p)
  h = np.einsum("ij,ji->i", j, np.linalg.pinv(j.T @ j) @ j.T)
  resid = resid / np.sqrt(np.clip(1 - h, 1e-3, None))
  resid = resid - resid.mean()
  rows, unconverged = [], 0
  for _ in range(n_boot):
    y_b = fitted + rng.choice(resid, size=len(y), replace=True) / w
    p_b, _, ok = _fit_scaled(x, y_b, w, start=p)
    if np.all(np.isfinite(p_b)):
      unconverged += not ok
      rows.append((p_b[0], math.exp(p_b[1]) * n_ref ** p_b[2], p_b[2]))
  return np.array(rows, dtype=float).reshape(-1, 3), unconverged


def _percentile_ci(samples: np.ndarray, names, level) -> dict[str, tuple[float, float]]:
  if not len(samples):
    return {}
  q = (1 - level) / 2
  return {name: (float(np.quantile(samples[:, i], q)), float(np.quantile(samples[:, i], 1 - q)))
          for i, name in enumerate(names)}


# ---------------------------------------------------------------- IsoFLOP analysis

def cluster_budgets(flops, rel_tol: float = 0.25) -> np.ndarray:
  """Label runs whose compute is within (1 + rel_tol)x of each other as one budget."""
  c = np.asarray(flops, dtype=float)
  order = np.argsort(c)
  labels = np.empty(len(c), dtype=int)
  label, first = -1, None
  for i in order:
    if first is None or c[i] > first * (1 + rel_tol):
      label, first = label + 1, c[i]
    labels[i] = label
  return labels


def parabola_min(x, y) -> tuple[float, float, np.ndarray] | None:
  """Vertex (x*, y*) of the least-squares parabola y = a x^2 + b x + c, or None if a <= 0."""
  coef = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 2)
  a, b, c = coef
  if a <= 0:
    return None
  xs = -b / (2 * a)
  return float(xs), float(c - b * b / (4 * a)), coef


@dataclasses.dataclass
class ComputeOptimal:
  """Per budget C_k the loss-minimising N and D, and N_opt = N0 C^a, D_opt = D0 C^b."""
  budgets: np.ndarray
  n_opt: np.ndarray
  d_opt: np.ndarray
  loss_opt: np.ndarray
  parabolas_n: list  # polyfit coefficients of L in ln N, per budget
  a: float
  n0: float
  b: float
  d0: float
  extrapolated: list[bool]  # optimum outside the sampled N range of its budget
  members: list[list[int]]  # indices of the runs of each budget
  dropped: list[float]  # budgets left out (fewer than 3 model sizes)
  ci: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

  def as_dict(self) -> dict:
    return {"budgets": self.budgets.tolist(), "n_opt": self.n_opt.tolist(), "d_opt": self.d_opt.tolist(),
            "loss_opt": self.loss_opt.tolist(), "a": self.a, "N0": self.n0, "b": self.b, "D0": self.d0,
            "extrapolated": self.extrapolated, "dropped_budgets": self.dropped,
            "ci95": {k: list(v) for k, v in self.ci.items()}}


def _optima(groups):
  """(ln C, ln N*, ln D*, L*) per budget from (lnC, lnN, lnD, L) arrays."""
  out = []
  for ln_c, ln_n, ln_d, loss in groups:
    pn, pd = parabola_min(ln_n, loss), parabola_min(ln_d, loss)
    if pn is None or pd is None:
      return None
    out.append((float(np.mean(ln_c)), pn[0], pd[0], pn[1], pn[2]))
  return out


def _loglog_line(ln_c, ln_y) -> tuple[float, float]:
  slope, intercept = np.polyfit(ln_c, ln_y, 1)
  return float(slope), float(intercept)


def compute_optimal(flops, n, d, loss, labels=None, n_boot: int = 1000, seed: int = 0,
                    level: float = CI_LEVEL) -> ComputeOptimal:
  """Chinchilla 'approach 2'. `labels` groups runs by budget (default: cluster_budgets(flops))."""
  c, n, d, y = (np.asarray(v, dtype=float) for v in (flops, n, d, loss))
  labels = cluster_budgets(c) if labels is None else np.asarray(labels)
  groups, members, dropped = [], [], []
  for k in sorted(set(labels.tolist())):
    m = labels == k
    if len(np.unique(n[m])) >= 3:
      groups.append((np.log(c[m]), np.log(n[m]), np.log(d[m]), y[m]))
      members.append(np.flatnonzero(m).tolist())
    else:
      dropped.append(float(np.exp(np.mean(np.log(c[m])))))
  if len(groups) < 2:
    raise ValueError("compute-optimal fits need >= 2 budgets with >= 3 model sizes each, got "
                     f"{len(groups)}")
  opt = _optima(groups)
  if opt is None:
    raise ValueError("a budget's loss is not convex in log N (no minimum inside the sweep): "
                     "widen the range of model sizes at that budget")
  ln_c = np.array([o[0] for o in opt])
  ln_n, ln_d = np.array([o[1] for o in opt]), np.array([o[2] for o in opt])
  a, ia = _loglog_line(ln_c, ln_n)
  b, ib = _loglog_line(ln_c, ln_d)
  extrap = [not (g[1].min() <= o[1] <= g[1].max()) for g, o in zip(groups, opt)]
  res = ComputeOptimal(budgets=np.exp(ln_c), n_opt=np.exp(ln_n), d_opt=np.exp(ln_d),
                       loss_opt=np.array([o[3] for o in opt]), parabolas_n=[o[4] for o in opt],
                       a=a, n0=math.exp(ia), b=b, d0=math.exp(ib), extrapolated=extrap,
                       members=members, dropped=dropped)
  if n_boot > 0:
    res.ci = _bootstrap_optimal(groups, n_boot, seed, level)
  return res


def _bootstrap_optimal(groups, n_boot, seed, level) -> dict[str, tuple[float, float]]:
  """Residual bootstrap of each budget's parabola (in ln N), refit everything."""
  rng = np.random.default_rng(seed)
  fits = []
  for ln_c, ln_n, ln_d, y in groups:
    coef = np.polyfit(ln_n, y, 2)
    fitted = np.polyval(coef, ln_n)
    r = y - fitted
    r = (r - r.mean()) * math.sqrt(len(y) / max(len(y) - 3, 1))
    fits.append((fitted, r))
  rows = []
  for _ in range(n_boot):
    sample = [(g[0], g[1], g[2], f + rng.choice(r, size=len(r), replace=True))
              for g, (f, r) in zip(groups, fits)]
    opt = _optima(sample)
    if opt is None:
      continue
    ln_c = np.array([o[0] for o in opt])
    a, _ = _loglog_line(ln_c, np.array([o[1] for o in opt]))
    b, _ = _loglog_line(ln_c, np.array([o[2] for o in opt]))
    rows.append((a, b))
  return _percentile_ci(np.array(rows).reshape(-1, 2), ("a", "b"), level)
