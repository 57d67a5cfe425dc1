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
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "Config file passed to benchmark.py.", required=True)
_VARIANTS = flags.DEFINE_multi_string("variant", [], "NAME:ARGS or NAME@DIR:ARGS; at least two.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds; each runs every variant once.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per run (benchmark.py --steps).")
_COMMON = flags.DEFINE_string("benchmark_flags", "", "More benchmark.py flags for every variant.")
_OUT = flags.DEFINE_string("out", "", "Write the runs and the summary as JSON here.")

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
