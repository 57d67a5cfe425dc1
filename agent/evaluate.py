"""Scored evaluation of a run's LM as a tool-using agent.

    python -m agent.evaluate --workdir=RUN --suite=builtin --split=heldout --out=DIR \
        [--num_per_family=20 --samples=1 --temperature=0 --constrained --baseline=no_tools]

Writes into DIR (default RUN/agent/<split>): report.json, report.md and
trajectories.jsonl for the LM policy (agent/scoring.py), the same under
DIR/baseline_<name>/ for the baseline, and compare.md (success per family,
side by side). Baselines: `no_tools` is the same LM with `Tools: none` in the
system prompt and every tool call invalid (it must answer directly);
`oracle` replays the gold calls (the ceiling); `none` skips the baseline.
`--suite=PATH.jsonl` evaluates a custom suite (agent/suite.py's format).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent import scoring
from agent.baselines import NoToolsPolicy, OraclePolicy
from agent.episode import Limits, run_episodes
from agent.suite import Task, load_suite
from agent.tasks import FAMILIES, build_suite

BASELINES = ("none", "no_tools", "oracle")


def load_tasks(suite: str, split: str, num_per_family: int, seed: int,
               families: Sequence[str] = FAMILIES) -> list[Task]:
  if suite == "builtin":
    return build_suite(split, num_per_family, seed=seed, families=families)
  tasks = load_suite(suite)
  return [t for t in tasks if t.family in families] if families != FAMILIES else tasks


def evaluate(policy: Any, tasks: Sequence[Task], out_dir: str, limits: Limits = Limits(), *,
             samples: int = 1, seed: int = 0, meta: dict | None = None) -> dict:
  """Runs every task `samples` times and writes the report files; returns the report."""
  start = time.time()
  results = run_episodes(tasks, policy, limits, samples=samples, seed=seed)
  meta = dict(meta or {}, episodes=len(results), samples=samples, seed=seed,
              wall_s=round(time.time() - start, 1))
  return scoring.write_report(results, out_dir, tasks, meta)


def success_by_family(report: dict) -> dict[str, float]:
  return {g["family"]: g["success"]["rate"] for g in report["groups"]}


def main(argv: Sequence[str] | None = None,
         make_policy: Callable[[argparse.Namespace], Any] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m agent.evaluate", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="a finished decoder-only training run")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  p.add_argument("--suite", default="builtin", help="'builtin' or a JSONL file of tasks")
  p.add_argument("--split", default="heldout", help="built-in split: train | heldout")
  p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
  p.add_argument("--num_per_family", type=int, default=20)
  p.add_argument("--samples", type=int, default=1, help="episodes per task (pass@k, pass^k)")
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--constrained", action="store_true", help="grammar-constrained actions")
  p.add_argument("--baseline", default="no_tools", choices=BASELINES)
  p.add_argument("--max_steps", type=int, default=Limits.max_steps)
  p.add_argument("--max_new_tokens", type=int, default=Limits.max_new_tokens)
  p.add_argument("--out", default=None, help="report directory (default WORKDIR/agent/SPLIT)")
  args = p.parse_args(argv)
  families = tuple(f for f in args.families.split(",") if f)
  out = args.out or os.path.join(args.workdir, "agent", args.split)
  try:
    tasks = load_tasks(args.suite, args.split, args.num_per_family, args.seed, families)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.samples > 1 and args.temperature <= 0:
    print("note: --samples>1 with greedy decoding repeats one episode; set --temperature",
          file=sys.stderr)
  limits = Limits(max_steps=args.max_steps, max_new_tokens=args.max_new_tokens)
  if make_policy is None:
    from agent.policy import LMPolicy
    try:
      policy = LMPolicy.from_workdir(args.workdir, args.step, temperature=args.temperature,
                                     constrained=args.constrained,
                                     max_new_tokens=args.max_new_tokens)
    except (ValueError, OSError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  else:
    policy = make_policy(args)
  meta = {"workdir": os.path.abspath(args.workdir), "suite": args.suite, "split": args.split,
          "constrained": args.constrained, "temperature": args.temperature}
  reports = {"tuned": evaluate(policy, tasks, out, limits, samples=args.samples, seed=args.seed,
                               meta=dict(meta, policy="lm"))}
  print(f"[evaluate] {len(tasks)} tasks x {args.samples}: {out}/report.md "
        f"({reports['tuned']['meta']['wall_s']}s)", flush=True)
  if args.baseline != "none":
    base = NoToolsPolicy(policy) if args.baseline == "no_tools" else OraclePolicy()
    bdir = os.path.join(out, f"baseline_{args.baseline}")
    reports[args.baseline.replace("_", "-")] = evaluate(
        base, tasks, bdir, limits, samples=args.samples, seed=args.seed,
        meta=dict(meta, policy=args.baseline))
  table = scoring.compare_markdown(reports)
  with open(os.path.join(out, "compare.md"), "w") as f:
    f.write(table)
  with open(os.path.join(out, "compare.json"), "w") as f:
    json.dump({k: success_by_family(r) for k, r in reports.items()}, f, indent=1)
  print(table, end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
