"""Run directories -> tables, config diff, seed statistics, plots and scaling-law fits.

  python -m experiments.compare runs/sweep [more dirs...] [--metric=eval/loss] \
      [--by=model.num_layers] [--fit=auto|params|isoflop|none] [--out=REPORT_DIR]

Reads only WORKDIR files (config.json, manifest.json, metrics.jsonl). A DIR is a run
or a root holding runs (searched 3 levels deep). Unreadable or unfinished runs are
listed under "Skipped" and left out (--include_partial keeps unfinished ones).
Markdown goes to stdout; with --out also report.md, runs.csv, seeds.csv,
config_diff.csv, fits.json and PNG plots.

* Seed groups: runs whose configs differ only in `seed` (and in fields that do not change
  what is trained: logging/checkpoint cadence, mesh, data_dir) -> mean ± std and a 95%
  t-interval of the final metric.
* --fit=params: L(N) = E + A N^-alpha over the final metric of every run (N = --params),
  bootstrap 95% CIs; for eval/bits_per_byte on the synthetic corpus E is compared with
  the logged entropy floor. --fit=isoflop: runs grouped into compute budgets by their
  flops_seen; per budget a parabola in log N gives N_opt and D_opt, then N_opt ∝ C^a,
  D_opt ∝ C^b. --fit=auto picks isoflop when >= 2 budgets hold >= 3 sizes each.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import os
import sys
from typing import Any

import numpy as np

from experiments import scaling
from lm.config import RESUMABLE_FIELDS, flatten

SEED_FIELDS = ("seed",)
# Fields that change how often or where, not what is trained: ignored when grouping seeds.
NOT_TRAINED = frozenset(RESUMABLE_FIELDS - {"train.num_steps", "train.eval_batches"})
_RUN_FILES = ("config.json", "metrics.jsonl", "manifest.json", "checkpoints", "sweep.log")


class RunError(ValueError):
  """Why a run directory cannot be used."""


@dataclasses.dataclass
class Run:
  name: str
  path: str
  config: dict
  manifest: dict
  records: list[dict]
  warnings: list[str] = dataclasses.field(default_factory=list)

  @property
  def flat(self) -> dict:
    # A field added to the code after this run was written is taken at its default: new
    # fields keep the old behaviour by default, so older runs still group with newer ones.
    return {**_config_defaults(), **flatten(self.config)}

  @property
  def num_steps(self) -> int | None:
    return self.config.get("train", {}).get("num_steps")

  @property
  def last_step(self) -> int:
    return max((r["step"] for r in self.records), default=0)

  @property
  def finished(self) -> bool:
    return any(r["step"] == self.num_steps for r in self.records)

  def series(self, split: str, key: str) -> list[dict]:
    return [r for r in self.records if r.get("split") == split and _number(r.get(key))]

  def last(self, split: str, key: str) -> Any:
    s = self.series(split, key)
    return s[-1][key] if s else None


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------- reading

def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise RunError(f"no {os.path.basename(path)}") from None
  except (OSError, json.JSONDecodeError) as e:
    raise RunError(f"{os.path.basename(path)} unreadable: {e}") from None


@functools.cache
def _config_defaults() -> dict:
  from lm.config import base_config
  return flatten(base_config().to_dict())


def load_run(path: str, name: str = "") -> Run:
  try:
    config = _read_json(os.path.join(path, "config.json"))
  except RunError as e:
    raise RunError(f"{e} (the run never started)" if str(e).startswith("no ") else str(e)) from None
  try:
    manifest = _read_json(os.path.join(path, "manifest.json"))
  except RunError:
    manifest = {}  # informative only
  metrics = os.path.join(path, "metrics.jsonl")
  if not os.path.exists(metrics):
    raise RunError("no metrics.jsonl (nothing logged yet)")
  records, bad = [], 0
  with open(metrics) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        r = json.loads(line)
        if isinstance(r, dict) and isinstance(r.get("step"), int):
          records.append(r)
          continue
      except json.JSONDecodeError:
        pass
      bad += 1
  if not records:
    raise RunError("metrics.jsonl holds no records")
  run = Run(name=name or os.path.basename(os.path.normpath(path)), path=path, config=config,
            manifest=manifest, records=records)
  if bad:
    run.warnings.append(f"{bad} unreadable line(s) in metrics.jsonl ignored")
  return run


def find_run_dirs(paths: list[str], max_depth: int = 3) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """([(name, path)], [(path, problem)]); names are paths relative to the DIR given."""
  found, problems = [], []
  for top in paths:
    if not os.path.isdir(top):
      problems.append((top, "not a directory"))
      continue
    before = len(found)
    stack = [(top, 0)]
    while stack:
      d, depth = stack.pop()
      entries = set(os.listdir(d))
      if entries & set(_RUN_FILES):
        rel = os.path.relpath(d, top)
        found.append((os.path.basename(os.path.normpath(top)) if rel == "." else rel, d))
        continue
      if depth < max_depth:
        stack += [(os.path.join(d, e), depth + 1) for e in sorted(entries, reverse=True)
                  if os.path.isdir(os.path.join(d, e)) and not e.startswith(".")]
    if len(found) == before:
      problems.append((top, "no run directories found"))
  names = [n for n, _ in found]
  found = [(p if names.count(n) > 1 else n, p) for n, p in found]  # clashing names: full paths
  return found, problems


def load_runs(paths: list[str], include_partial: bool = False) -> tuple[list[Run], list[tuple[str, str]]]:
  dirs, skipped = find_run_dirs(paths)
  runs = []
  for name, path in dirs:
    try:
      run = load_run(path, name)
    except RunError as e:
      skipped.append((name, str(e)))
      continue
    if not run.finished and not include_partial:
      skipped.append((name, f"unfinished: step {run.last_step} of {run.num_steps}"))
      continue
    runs.append(run)
  return runs, skipped


# ---------------------------------------------------------------- tables

def parse_metric(metric: str) -> tuple[str, str]:
  if "/" not in metric:
    raise ValueError(f"--metric={metric!r} must look like SPLIT/KEY, e.g. eval/loss or train/loss")
  split, key = metric.split("/", 1)
  return split, key


def summarize(run: Run, metric: str, higher_is_better: bool = False) -> dict:
  """One table row: final and best metric, size, tokens, FLOPs, wall time, MFU."""
  split, key = parse_metric(metric)
  s = run.series(split, key)
  best = (max if higher_is_better else min)(s, key=lambda r: r[key]) if s else None
  train = run.series("train", "step")
  last_train = train[-1] if train else {}
  mfu = [r["mfu"] for r in run.series("train", "mfu")]
  return {
      "run": run.name, "final": s[-1][key] if s else None, "best": best[key] if best else None,
      "best_step": best["step"] if best else None, "step": run.last_step, "num_steps": run.num_steps,
      "params": last_train.get("num_params"),
      "tokens": max((r.get("tokens_seen", 0) for r in run.records), default=None),
      "flops": max((r.get("flops_seen", 0) for r in run.records), default=None),
      "wall_s": max((r.get("wall_s", 0) for r in run.records), default=None),
      # the first logged interval includes compilation: leave it out when there are others
      "mfu": float(np.median(mfu[1:] if len(mfu) > 1 else mfu)) if mfu else None,
  }


def differing_fields(runs: list[Run], ignore=frozenset()) -> list[str]:
  flats = [r.flat for r in runs]
  keys = sorted(set().union(*flats)) if flats else []
  def text(f, k):
    return json.dumps(f[k], sort_keys=True, default=str) if k in f else "\0missing"
  return [k for k in keys if k not in ignore and len({text(f, k) for f in flats}) > 1]


def config_diff_rows(runs: list[Run]) -> tuple[list[str], list[dict]]:
  fields = differing_fields(runs)
  return fields, [{"run": r.name, **{f: r.flat.get(f, "—") for f in fields}} for r in runs]


@dataclasses.dataclass
class SeedGroup:
  label: str
  runs: list[Run]
  stats: scaling.MeanCI


def seed_groups(runs: list[Run], metric: str, seed_fields=SEED_FIELDS) -> list[SeedGroup]:
  """Runs identical up to seed (and NOT_TRAINED fields), with final-metric statistics."""
  split, key = parse_metric(metric)
  ignore = set(seed_fields) | NOT_TRAINED
  groups: dict[str, list[Run]] = {}
  for r in runs:
    ident = json.dumps({k: v for k, v in r.flat.items() if k not in ignore}, sort_keys=True, default=str)
    groups.setdefault(ident, []).append(r)
  members = [g for g in groups.values() if all(r.last(split, key) is not None for r in g)]
  # label each group by the fields that tell groups apart
  labels_from = differing_fields([g[0] for g in members], ignore) if len(members) > 1 else []
  out = []
  for g in members:
    label = ", ".join(f"{_short(f)}={g[0].flat.get(f)}" for f in labels_from) or "all runs"
    out.append(SeedGroup(label, g, scaling.mean_ci([r.last(split, key) for r in g])))
  return out


def _short(field: str) -> str:
  return field.rsplit(".", 1)[-1]


def _fmt(v: Any) -> str:
  if v is None:
    return "—"
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    return str(v)
  if isinstance(v, int):
    return f"{v:,}"
  if math.isnan(v):
    return "—"
  return f"{v:.3e}" if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3) else f"{v:.4f}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_csv(path: str, header: list[str], rows: list[list[Any]]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(["" if c is None else c for c in row] for row in rows)


# ---------------------------------------------------------------- scaling fits

def param_count(run: Run, params: str) -> float | None:
  """N for the fit: 'num_params' (logged total), 'matmul' (the 6N formula's N) or a train key."""
  if params == "matmul":
    from lm.config import ModelConfig
    from lm.metrics import matmul_params
    try:
      return float(matmul_params(ModelConfig.from_config(run.config["model"])))
    except (TypeError, KeyError):
      return None
  v = run.last("train", params)
  return float(v) if v is not None else None


def fit_params(runs: list[Run], metric: str, params: str, n_boot: int, seed: int = 0):
  split, key = parse_metric(metric)
  pts = [(param_count(r, params), r.last(split, key)) for r in runs]
  pts = [(n, l) for n, l in pts if n is not None and l is not None]
  n, l = (np.array(v, dtype=float) for v in zip(*pts)) if pts else (np.array([]), np.array([]))
  return scaling.fit_power_law(n, l, n_boot=n_boot, seed=seed), n, l


def isoflop_data(runs: list[Run], metric: str, params: str):
  split, key = parse_metric(metric)
  rows = [(max(r.get("flops_seen", 0) for r in run.records), param_count(run, params),
           max(r.get("tokens_seen", 0) for r in run.records), run.last(split, key)) for run in runs]
  rows = [x for x in rows if x[0] > 0 and x[1] is not None and x[2] > 0 and x[3] is not None]
  return tuple(np.array(v, dtype=float) for v in zip(*rows)) if rows else None


def is_isoflop(data) -> bool:
  if data is None:
    return False
  c, n = data[0], data[1]
  labels = scaling.cluster_budgets(c)
  return sum(len(np.unique(n[labels == k])) >= 3 for k in set(labels.tolist())) >= 2


def entropy_floor(runs: list[Run], metric: str, key: str = "entropy_floor_bpb") -> float | None:
  """The synthetic corpus's floor, when the metric is bits per byte and every run logs one floor.

  key "entropy_floor_bpb": the source's asymptotic floor; "eval_floor_bpb": the source's own
  score on the held-out documents every run is evaluated on (a finite sample sits off the
  asymptote by its sampling error, which all runs share).
  """
  if parse_metric(metric)[1] != "bits_per_byte":
    return None
  floors = {r.last("eval", key) for r in runs}
  return floors.pop() if len(floors) == 1 and None not in floors else None


# ---------------------------------------------------------------- plots

def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _finish(ax, xlabel: str, ylabel: str, logx: bool = True, logy: bool = False) -> None:
  ax.set_xscale("log" if logx else "linear")
  ax.set_yscale("log" if logy else "linear")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)


def _save(plt, fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_curves(runs: list[Run], metric: str, out_dir: str, by: str = "", groups=None) -> list[str]:
  """metric vs step, tokens and FLOPs: a line per run, or per seed group (mean, min-max band)."""
  plt = _plt()
  split, key = parse_metric(metric)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  by_values = sorted({str(r.flat.get(by)) for r in runs}) if by else []
  files = []
  for x_key, x_label, log in (("step", "step", False), ("tokens_seen", "tokens", True),
                              ("flops_seen", "training FLOPs", True)):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if groups:
      for i, g in enumerate(groups):
        xs, ys = _group_curve(g.runs, split, key, x_key)
        if len(xs):
          ax.plot(xs, ys.mean(0), color=colors[i % len(colors)], label=f"{g.label} (n={len(g.runs)})")
          ax.fill_between(xs, ys.min(0), ys.max(0), color=colors[i % len(colors)], alpha=0.2)
    else:
      seen = set()
      for i, r in enumerate(runs):
        s = r.series(split, key)
        tag = f"{_short(by)}={r.flat.get(by)}" if by else r.name
        c = colors[(by_values.index(str(r.flat.get(by))) if by else i) % len(colors)]
        ax.plot([p.get(x_key, 0) for p in s], [p[key] for p in s], color=c, marker="." if len(s) < 30 else None,
                label=None if tag in seen else tag)
        seen.add(tag)
    _finish(ax, x_label, metric, logx=log)
    files.append(_save(plt, fig, os.path.join(out_dir, f"{_file_tag(metric)}_vs_{x_label.split()[-1].lower()}.png")))
  return files


def _group_curve(runs: list[Run], split: str, key: str, x_key: str):
  """Mean over a group's runs at the steps they all logged."""
  per_run = [{r2["step"]: r2 for r2 in r.series(split, key)} for r in runs]
  steps = sorted(set.intersection(*(set(p) for p in per_run)))
  xs = np.array([per_run[0][s].get(x_key, s) for s in steps], dtype=float)
  ys = np.array([[p[s][key] for s in steps] for p in per_run], dtype=float)
  return xs, ys


def _file_tag(metric: str) -> str:
  return metric.replace("/", "_")


def plot_power_law(fit, n, l, metric: str, path: str, floor: float | None = None,
                   eval_floor: float | None = None) -> str:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 200)
  ax.scatter(n, l, color="k", zorder=3, label="runs")
  ax.plot(grid, fit.predict(grid), color="C0",
          label=f"L = {fit.E:.3g} + {fit.A:.3g}·N^-{fit.alpha:.3g}")
  band = fit.band(grid)
  if band is not None:
    ax.fill_between(grid, band[0], band[1], color="C0", alpha=0.2, label="95% bootstrap band")
  ax.axhline(fit.E, color="C0", ls="--", lw=1, label="E (fit)")
  if floor is not None:
    ax.axhline(floor, color="C3", ls=":", lw=1.5, label=f"entropy floor {floor:.4g}")
  if eval_floor is not None:
    ax.axhline(eval_floor, color="C2", ls=":", lw=1.5, label=f"source's score on eval docs {eval_floor:.4g}")
  # The bootstrap band fans out beyond the data; keep the y range on the runs and floors.
  ys = [*l, fit.E, *(f for f in (floor, eval_floor) if f is not None)]
  pad = 0.15 * (max(ys) - min(ys)) or 0.01 * abs(max(ys))
  ax.set_ylim(min(ys) - pad, max(ys) + pad)
  _finish(ax, "parameters N", metric)
  return _save(plt, fig, path)


def plot_isoflop(res: scaling.ComputeOptimal, data, path: str, metric: str) -> str:
  plt = _plt()
  c, n, d, l = data
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
  for k, (idx, coef) in enumerate(zip(res.members, res.parabolas_n)):
    m = np.asarray(idx)
    ax1.scatter(n[m], l[m], color=f"C{k}", label=f"C={res.budgets[k]:.2g}")
    grid = np.geomspace(min(n[m].min(), res.n_opt[k]), max(n[m].max(), res.n_opt[k]), 100)
    ax1.plot(grid, np.polyval(coef, np.log(grid)), color=f"C{k}")
    ax1.plot([res.n_opt[k]], [res.loss_opt[k]], marker="*", ms=12, color=f"C{k}")
  _finish(ax1, "parameters N", metric)
  grid = np.geomspace(res.budgets.min() / 2, res.budgets.max() * 2, 50)
  ax2.scatter(res.budgets, res.n_opt, color="C0", label="N_opt")
  ax2.plot(grid, res.n0 * grid ** res.a, color="C0", label=f"N_opt ∝ C^{res.a:.3f}")
  ax2.scatter(res.budgets, res.d_opt, color="C1", label="D_opt")
  ax2.plot(grid, res.d0 * grid ** res.b, color="C1", label=f"D_opt ∝ C^{res.b:.3f}")
  _finish(ax2, "compute C (FLOPs)", "N_opt, D_opt", logy=True)
  return _save(plt, fig, path)


# ---------------------------------------------------------------- report

def _ci(ci: dict, k: str) -> str:
  return f"[{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else "—"


def _power_law_section(runs, args, out_dir, fits) -> list[str]:
  try:
    fit, n, l = fit_params(runs, args.metric, args.params, args.n_boot)
  except ValueError as e:
    return [] if args.fit == "auto" else ["## Scaling fit", "", f"Not fitted: {e}", ""]
  floor = entropy_floor(runs, args.metric)
  fits["power_law"] = {**fit.as_dict(), "params": args.params, "metric": args.metric, "entropy_floor": floor}
  notes = [] if fit.converged else ["the fit itself did not converge"]
  if fit.boot_unconverged:
    notes.append(f"{fit.boot_unconverged} bootstrap fits had not converged after 200 iterations (kept)")
  if len(np.unique(n)) < 5:
    notes.append(f"only {len(np.unique(n))} distinct sizes for 3 parameters: the fit is weakly determined")
  boots = 0 if fit.samples is None else len(fit.samples)
  lines = ["## Scaling fit: L(N) = E + A·N^-α", "",
           f"{len(n)} runs, N = {args.params}, {boots} residual-bootstrap fits"
           + "".join(f"; {x}" for x in notes) + ".",
           "", markdown_table(["param", "estimate", "95% CI"], [[k, getattr(fit, a), _ci(fit.ci, a)] for k, a in
                                                                 (("E", "E"), ("A", "A"), ("α", "alpha"))]), ""]
  if floor is not None and "E" in fit.ci:
    inside = fit.ci["E"][0] <= floor <= fit.ci["E"][1]
    fits["power_law"]["floor_inside_ci"] = inside
    lines += [f"Entropy floor {floor:.4f} bits/byte is {'inside' if inside else 'OUTSIDE'} E's 95% CI.", ""]
  eval_floor = entropy_floor(runs, args.metric, "eval_floor_bpb")
  if eval_floor is not None and "E" in fit.ci:
    inside = fit.ci["E"][0] <= eval_floor <= fit.ci["E"][1]
    fits["power_law"].update(eval_floor=eval_floor, eval_floor_inside_ci=inside)
    lines += [f"The source's own score on the eval documents, {eval_floor:.4f} bits/byte, is "
              f"{'inside' if inside else 'OUTSIDE'} E's 95% CI (E - that = {fit.E - eval_floor:+.4f}).", ""]
  if out_dir:
    plot_power_law(fit, n, l, args.metric, os.path.join(out_dir, "scaling_fit.png"), floor, eval_floor)
    lines += ["![scaling fit](scaling_fit.png)", ""]
  return lines


def _isoflop_section(data, args, out_dir, fits) -> list[str]:
  try:
    if data is None:
      raise ValueError("no runs with flops_seen, tokens_seen and the metric")
    res = scaling.compute_optimal(*data, n_boot=args.n_boot)
  except ValueError as e:
    return ["## Compute-optimal fit", "", f"Not fitted: {e}", ""]
  fits["compute_optimal"] = {**res.as_dict(), "params": args.params, "metric": args.metric}
  rows = [list(r) for r in zip(res.budgets.tolist(), res.n_opt.tolist(), res.d_opt.tolist(), res.loss_opt.tolist(),
                               ["yes" if x else "no" for x in res.extrapolated])]
  lines = ["## Compute-optimal scaling (IsoFLOP)", ""]
  if res.dropped:
    lines += [f"Budgets left out (fewer than 3 model sizes): {', '.join(f'{b:.3g}' for b in res.dropped)}", ""]
  lines += [markdown_table(["budget C", "N_opt", "D_opt", "loss at optimum", "extrapolated"], rows), "",
            markdown_table(["law", "exponent", "95% CI"], [["N_opt ∝ C^a", res.a, _ci(res.ci, "a")],
                                                           ["D_opt ∝ C^b", res.b, _ci(res.ci, "b")]]), ""]
  if out_dir:
    plot_isoflop(res, data, os.path.join(out_dir, "isoflop.png"), args.metric)
    lines += ["![isoflop](isoflop.png)", ""]
  return lines


def fit_section(runs, args, out_dir: str | None, fits: dict) -> list[str]:
  """Scaling-law fits as markdown lines; fit failures are reported, not raised."""
  data = isoflop_data(runs, args.metric, args.params)
  mode = ("isoflop" if is_isoflop(data) else "params") if args.fit == "auto" else args.fit
  if mode == "params":
    return _power_law_section(runs, args, out_dir, fits)
  return _isoflop_section(data, args, out_dir, fits) if mode == "isoflop" else []


# (csv column, markdown header, markdown cell) of the runs table
_COLUMNS = [("final", "{m} final", None), ("best", "{m} best", None), ("best_step", "best step", None),
            ("step", "steps", lambda s: f"{s['step']}/{s['num_steps']}"), ("num_steps", None, None),
            ("params", "params", None), ("tokens", "tokens", None), ("flops", "FLOPs", None),
            ("wall_s", "wall s", lambda s: f"{s['wall_s']:.1f}"), ("mfu", "MFU", lambda s: f"{s['mfu']:.3f}")]


def _runs_table(runs: list[Run], rows: list[dict], metric: str, by: str, markdown: bool):
  header = ["run", *([by] if by else [])]
  header += [(h.format(m=metric) if markdown else c) for c, h, _ in _COLUMNS if h or not markdown]
  table = []
  for s, r in zip(rows, runs):
    by_value = [str(r.flat.get(by)) if markdown else r.flat.get(by)] if by else []
    cells = [(f(s) if markdown and f and s[c] is not None else s[c]) for c, h, f in _COLUMNS if h or not markdown]
    table.append([s["run"], *by_value, *cells])
  return header, table


def report(runs: list[Run], skipped: list[tuple[str, str]], args, out_dir: str | None) -> tuple[str, dict]:
  """The markdown report (and, with out_dir, every file next to it); returns (markdown, fits)."""
  split, key = parse_metric(args.metric)
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
  if args.by and runs and not any(args.by in r.flat for r in runs):
    from lm.config import base_config, suggest_field
    raise ValueError(f"--by={args.by}: no run has that field.{suggest_field(base_config(), args.by)}")
  if args.by:
    runs = sorted(runs, key=lambda r: (str(type(r.flat.get(args.by))), r.flat.get(args.by), r.name))
  rows = [summarize(r, args.metric, args.higher_is_better) for r in runs]
  md = [f"# Runs compared on {args.metric}", "",
        markdown_table(*_runs_table(runs, rows, args.metric, args.by, True)), ""]
  fields, diff = config_diff_rows(runs)
  diff_table = [[d[k] for k in ["run", *fields]] for d in diff]
  md += ["## Config diff", "", markdown_table(["run", *fields], [[str(c) for c in row] for row in diff_table])
         if fields else "All runs have the same config.", ""]
  groups = seed_groups(runs, args.metric)
  seed_header = ["group", "n", "seeds", "mean", "std", "95% CI low", "95% CI high"]
  seed_rows = [[g.label, g.stats.n, ", ".join(str(r.flat.get("seed")) for r in g.runs), g.stats.mean, g.stats.std,
                g.stats.low, g.stats.high] for g in groups]
  if any(g.stats.n > 1 for g in groups):
    md += [f"## Seeds: final {args.metric}, mean ± std, 95% t-interval", "",
           markdown_table(seed_header, seed_rows), ""]
  fits: dict = {}
  md += fit_section(runs, args, out_dir, fits)
  warnings = [(r.name, w) for r in runs for w in r.warnings]
  warnings += [(r.name, f"no {args.metric} records") for r in runs if r.last(split, key) is None]
  if skipped or warnings:
    md += ["## Skipped and warnings", ""] + [f"- {n}: {why}" for n, why in skipped + warnings] + [""]
  if out_dir:
    write_csv(os.path.join(out_dir, "runs.csv"), *_runs_table(runs, rows, args.metric, args.by, False))
    write_csv(os.path.join(out_dir, "config_diff.csv"), ["run", *fields], diff_table)
    write_csv(os.path.join(out_dir, "seeds.csv"), seed_header, seed_rows)
    with open(os.path.join(out_dir, "fits.json"), "w") as f:
      json.dump(fits, f, indent=2)
    if runs:
      plots = plot_curves(runs, args.metric, out_dir, args.by, groups if args.lines == "group" else None)
      md += ["## Curves", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write("\n".join(md))
  return "\n".join(md), fits


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__.split("\n")[0])
  p.add_argument("dirs", nargs="+", help="run directories, or roots holding them")
  p.add_argument("--metric", default="eval/loss", help="SPLIT/KEY of metrics.jsonl records")
  p.add_argument("--by", default="", help="config field to sort and colour by, e.g. model.num_layers")
  p.add_argument("--out", default="", help="report directory (markdown, CSV, JSON, PNG)")
  p.add_argument("--fit", choices=("auto", "params", "isoflop", "none"), default="auto")
  p.add_argument("--params", default="num_params", help="N for fits: num_params, matmul, or a train record key")
  p.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples for CIs")
  p.add_argument("--lines", choices=("run", "group"), default="run", help="plot a line per run or per seed group")
  p.add_argument("--higher_is_better", action="store_true", help="best = max (accuracy-like metrics)")
  p.add_argument("--include_partial", action="store_true", help="keep unfinished runs")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  runs, skipped = load_runs(args.dirs, args.include_partial)
  try:
    md, _ = report(runs, skipped, args, args.out or None)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(md)
  if not runs:
    print("error: no usable runs", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
