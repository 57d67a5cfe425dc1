"""Compare variants of a train step on a noisy machine: benchmark.py runs, alternating.

  python -m experiments.benchmark_ab --config=experiments/configs/ref_tiny.py --rounds=3 \\
      --variant="xla:--config.model.weight_grad_impl=xla" --variant="auto:"

A variant is NAME:ARGS (ARGS: extra benchmark.py flags, space-separated) or
NAME@DIR:ARGS to run it from another checkout, e.g. a `git worktree` at an older
commit. Each round runs every variant once, in turn, as its own process
(`benchmark.py --nodecode`), so slow drifts of the machine hit all variants alike.
A step-time comparison is only as good as that: on a shared VM the same code moves
by 5-15% between runs, and the peak FLOP/s measured in each run moves with it.

Prints each round's median step time and MFU per variant, its step time relative
to the first variant in the same round, and the median over rounds; --out writes
the same as JSON.

--interleave compares config variants inside one process instead: it compiles
every variant's train step, then runs single steps in turn (A B, B A, A B, ...)
and reports, per variant, the median over steps of its step time divided by the
first variant's step next to it, with the quartiles of that ratio. Drift then
hits both sides of every pair, so differences of about 1% are resolved where
separate runs need 5-15% (experiments/BENCHMARKS.md). Its variants may only set
config fields (`--config.model.x=v`) or pass XLA options to their compile
(`--xla_cpu_prefer_vector_width=512`); code versions need separate runs.
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "Config file passed to benchmark.py.", required=True)
_VARIANTS = flags.DEFINE_multi_string("variant", [], "NAME:ARGS or NAME@DIR:ARGS; at least two.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds; each runs every variant once.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per run (benchmark.py --steps).")
_COMMON = flags.DEFINE_string("benchmark_flags", "", "More benchmark.py flags for every variant.")
_OUT = flags.DEFINE_string("out", "", "Write the runs and the summary as JSON here.")
_INTERLEAVE = flags.DEFINE_bool(
    "interleave", False, "Compare config variants in one process, alternating single steps "
    "(--steps pairs); variants and --benchmark_flags may only hold --config.*, XLA options "
    "(--xla_NAME=VALUE, for that variant's compile) and --matmul_n.")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_variant(text: str) -> tuple[str, str, list[str]]:
  """(name, directory, extra args) of a --variant; ValueError naming the format otherwise."""
  head, sep, args = text.partition(":")
  name, _, directory = head.partition("@")
  if not sep or not name:
    raise ValueError(f"--variant={text!r}: expected NAME:ARGS or NAME@DIR:ARGS (ARGS may be empty)")
  directory = os.path.abspath(directory) if directory else _ROOT
  if not os.path.isfile(os.path.join(directory, "experiments", "benchmark.py")):
    raise ValueError(f"--variant={text!r}: {directory} has no experiments/benchmark.py; "
                     "give a checkout of this repository (e.g. a git worktree)")
  return name, directory, shlex.split(args)


def run_once(directory: str, config: str, args: list[str], steps: int) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "bench.json")
    cmd = [sys.executable, "-m", "experiments.benchmark", f"--config={os.path.abspath(config)}",
           f"--steps={steps}", "--nodecode", *args, f"--out={out}"]
    p = subprocess.run(cmd, cwd=directory, capture_output=True, text=True)
    if p.returncode != 0:
      raise RuntimeError(f"benchmark failed in {directory}: {shlex.join(cmd)}\n{p.stderr[-3000:]}")
    with open(out) as f:
      r = json.load(f)
  return {k: r[k] for k in ("step_time_s", "step_time_min_s", "mfu", "peak_flops", "tokens_per_s")}


def compare(config: str, variants: list[tuple[str, str, list[str]]], rounds: int, steps: int,
            log=print) -> dict:
  """Run every variant once per round, in turn; the runs and per-variant summaries."""
  runs = []
  for rnd in range(rounds):
    first = None
    for name, directory, args in variants:
      r = run_once(directory, config, args, steps)
      first = first or r["step_time_s"]
      r.update(variant=name, round=rnd, vs_first=r["step_time_s"] / first)
      runs.append(r)
      log(f"round {rnd + 1}  {name:<16} {r['step_time_s'] * 1e3:9.1f} ms  x{r['vs_first']:.3f}  "
          f"MFU {100 * r['mfu']:5.1f}%  (peak {r['peak_flops'] / 1e9:.0f} GFLOP/s)")
  summary = {}
  for name, _, _ in variants:
    mine = [r for r in runs if r["variant"] == name]
    summary[name] = {"step_time_s": statistics.median(r["step_time_s"] for r in mine),
                     "vs_first": statistics.median(r["vs_first"] for r in mine),
                     "mfu": statistics.median(r["mfu"] for r in mine)}
  return {"config": config, "rounds": rounds, "steps": steps, "runs": runs, "summary": summary}


def split_interleaved_args(variant: str, args: list[str]) -> tuple[dict, dict, int | None]:
  """({dotted config field: value text}, {XLA option: value}, --matmul_n or None) of an
  interleaved variant's args."""
  overrides, xla_options, matmul_n = {}, {}, None
  for arg in args:
    key, sep, value = arg.partition("=")
    if sep and key.startswith("--config."):
      overrides[key[len("--config."):]] = value
    elif sep and key.startswith("--xla_"):
      xla_options[key[2:]] = _option_value(value)
    elif sep and key == "--matmul_n":
      matmul_n = int(value)
    else:
      raise ValueError(f"--variant {variant!r}: {arg!r} is neither a --config.FIELD=VALUE override "
                       "nor an XLA option --xla_NAME=VALUE; --interleave compares those only (drop "
                       "--interleave to compare other benchmark flags or checkouts)")
  return overrides, xla_options, matmul_n


def _option_value(text: str):
  """An XLA option's value: a bool, an int, a float or a string."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def _parse_value(field: str, old, text: str):
  if isinstance(old, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"--config.{field}={text!r}: expected true or false")
    return text.lower() in ("true", "1")
  try:
    return type(old)(text) if isinstance(old, (int, float, str)) else type(old)(eval_literal(text))
  except (TypeError, ValueError) as e:
    raise ValueError(f"--config.{field}={text!r}: expected {type(old).__name__} ({e})") from None


def eval_literal(text: str):
  import ast

  return ast.literal_eval(text)


def apply_overrides(cfg, overrides: dict):
  """A copy of cfg with the dotted fields set; ValueError naming an unknown field."""
  import copy

  cfg = copy.deepcopy(cfg)
  for field, text in overrides.items():
    node, *path = [cfg, *field.split(".")]
    for part in path[:-1]:
      if part not in node:
        raise ValueError(f"--config.{field}: the config has no field {part!r}")
      node = node[part]
    if path[-1] not in node:
      raise ValueError(f"--config.{field}: the config has no field {path[-1]!r}")
    node[path[-1]] = _parse_value(field, node[path[-1]], text)
  return cfg


def load_config(path: str):
  import importlib.util

  spec = importlib.util.spec_from_file_location("benchmark_ab_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def interleaved(cfgs: dict, steps: int, warmup: int = 3, matmul_n: int = 2048, log=print,
                xla_options: dict | None = None) -> dict:
  """Compile every variant's train step in this process (with its XLA options, if any), then
  alternate single steps."""
  import jax
  import numpy as np

  from experiments.train_step import build_train_step
  from lm.metrics import peak_flops, step_cost

  built = {}
  for name, cfg in cfgs.items():
    built[name] = build_train_step(cfg, (xla_options or {}).get(name) or None)
    log(f"{name:<16} compiled in {built[name].compile_s:.2f} s")
  for b in built.values():
    for _ in range(warmup):
      b.run()
  times = {name: [] for name in built}
  names = list(built)
  for i in range(steps):
    for name in names if i % 2 == 0 else names[::-1]:
      t = time.perf_counter()
      built[name].run()
      times[name].append(time.perf_counter() - t)
  peak = peak_flops(jax.devices(), matmul_n=matmul_n, repeats=10)[0]
  summary = {}
  for name, b in built.items():
    ratios = np.asarray(times[name]) / np.asarray(times[names[0]])
    tokens, flops = step_cost(b.model_cfg, b.batch_shapes)
    step_s = statistics.median(times[name])
    summary[name] = {"step_time_s": step_s, "vs_first": float(np.median(ratios)),
                     "vs_first_quartiles": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
                     "mfu": flops / step_s / peak, "tokens_per_s": tokens / step_s}
  return {"steps": steps, "peak_flops": peak, "times_s": times, "summary": summary}


def _main_interleaved(variants, common):
  try:
    if _STEPS.value < 2:
      raise ValueError("--steps must be at least 2 with --interleave (it pairs steps)")
    common_overrides, common_xla, common_n = split_interleaved_args("--benchmark_flags", common)
    base = load_config(_CONFIG.value)
    cfgs, xla_options, matmul_n = {}, {}, common_n or 2048
    for name, directory, args in variants:
      if directory != _ROOT:
        raise ValueError(f"--variant {name!r}: --interleave runs this checkout only (no @DIR)")
      overrides, options, n = split_interleaved_args(name, args)
      matmul_n = n or matmul_n
      cfgs[name] = apply_overrides(base, {**common_overrides, **overrides})
      xla_options[name] = {**common_xla, **options}
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  from lm import host_memory

  host_memory.apply_config(base)  # before the backend starts
  try:
    result = interleaved(cfgs, _STEPS.value, matmul_n=matmul_n, xla_options=xla_options)
  except Exception as e:  # e.g. XLA refusing an unknown option, at compile time
    if "option" not in str(e):
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  first = next(iter(cfgs))
  print(f"\n{_STEPS.value} interleaved steps each; ratio = median over steps of the step time / "
        f"{first}'s step next to it (quartiles):")
  for name, s in result["summary"].items():
    q = s["vs_first_quartiles"]
    print(f"  {name:<16} {s['step_time_s'] * 1e3:9.1f} ms  x{s['vs_first']:.3f} (x{q[0]:.3f}-x{q[1]:.3f})  "
          f"MFU {100 * s['mfu']:5.1f}%")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"config": _CONFIG.value, **result}, f, indent=2)


def main(argv):
  del argv
  try:
    variants = [parse_variant(v) for v in _VARIANTS.value]
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if len(variants) < 2 or len({v[0] for v in variants}) != len(variants):
    print("error: give at least two --variant flags with different names", file=sys.stderr)
    sys.exit(2)
  if _ROUNDS.value < 1:
    print("error: --rounds must be at least 1", file=sys.stderr)
    sys.exit(2)
  common = shlex.split(_COMMON.value)
  if _INTERLEAVE.value:
    _main_interleaved(variants, common)
    return
  variants = [(n, d, common + a) for n, d, a in variants]
  result = compare(_CONFIG.value, variants, _ROUNDS.value, _STEPS.value)
  print("\nmedian over rounds:")
  for name, s in result["summary"].items():
    print(f"  {name:<16} {s['step_time_s'] * 1e3:9.1f} ms  x{s['vs_first']:.3f}  MFU {100 * s['mfu']:5.1f}%")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
