"""Multi-stage ablations: named training runs that build on each other, then agent evaluations.

  python -m experiments.ablation --ablation=experiments/sweeps/objectives.py --root=runs/objectives \
      [--only=REGEX] [--dry_run]

A sweep (experiments/sweep.py) crosses fields of one config; an ablation is an ordered
list of runs where later ones start from earlier ones (pretrain -> tune), plus agent
evaluations of some of them. An ablation file defines `get_ablation()` returning:

  prepare  optional callable(root): builds data the runs share (must be idempotent)
  runs     [{"name", "config", "overrides": {dotted field: value}}, ...] in order; a string
           value may hold "{root}" (the --root directory), e.g. train.init_from="{root}/pretrain_clm"
  evals    [{"run": name, "args": [agent.evaluate flags], "name": optional label}, ...],
           after all runs; each label is a column of agent success (default "heldout")
  columns  metric keys of the final eval record shown in the table (default loss, accuracy)

Each run's WORKDIR is ROOT/<name>; a finished run is skipped and an unfinished one resumes
(the sweep's rule); an evaluation whose report exists is skipped. At the end ROOT/report.md
and ROOT/report.json hold one row per run: the final eval metrics, params, tokens, FLOPs,
wall time, and the agent's success rate (with its 95% CI) where the run was evaluated.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from experiments import sweep as sweeps
from lm.config import flatten

EVAL_DIR = "agent_eval"  # ROOT/<run>/agent_eval[_<name>]: an evaluation's report directory


def _fill_root(value: Any, root: str) -> Any:
  return value.replace("{root}", root) if isinstance(value, str) else value


def load_ablation(path: str) -> dict:
  module, _ = sweeps._load_module(path, "ablation")
  if not hasattr(module, "get_ablation"):
    raise sweeps.SweepError(f"ablation file {path} defines no get_ablation()")
  spec = module.get_ablation()
  names = [r.get("name") for r in spec.get("runs", [])]
  if not names or any(not n or not re.fullmatch(r"[A-Za-z0-9._+-]+", n) for n in names):
    raise sweeps.SweepError(f"ablation {path}: every run needs a name of letters, digits, . _ + -; got {names}")
  if len(set(names)) != len(names):
    raise sweeps.SweepError(f"ablation {path}: run names repeat: {names}")
  for e in spec.get("evals", []):
    if e.get("run") not in names:
      raise sweeps.SweepError(f"ablation {path}: eval of unknown run {e.get('run')!r}; runs: {names}")
  return spec


def expand_runs(spec: dict, root: str) -> list[sweeps.Run]:
  """The runs with {root} filled in and every field checked against its config."""
  out = []
  for r in spec["runs"]:
    overrides = {k: _fill_root(v, root) for k, v in r.get("overrides", {}).items()}
    s = sweeps.Sweep(config=r["config"], fixed=overrides)
    run = sweeps.expand(s, root)[0]
    run.name, run.workdir = r["name"], os.path.join(root, r["name"])
    out.append(run)
  return out


def eval_name(e: dict) -> str:
  return e.get("name", "heldout")


def eval_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, EVAL_DIR if name == "heldout" else f"{EVAL_DIR}_{name}")


def eval_command(e: dict, root: str, python: str) -> list[str]:
  workdir = os.path.join(root, e["run"])
  return [*shlex.split(python), "-m", "agent.evaluate", f"--workdir={workdir}",
          f"--out={eval_dir(workdir, eval_name(e))}", *e.get("args", [])]


def _final_eval(workdir: str) -> dict:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  evals = [r for r in records if r.get("split") == "eval"]
  trains = [r for r in records if r.get("split") == "train"]
  out = dict(evals[-1]) if evals else {}
  if trains:
    last = trains[-1]
    out.update({f"train/{k}": last[k] for k in ("num_params", "tokens_seen", "flops_seen", "wall_s")
                if k in last})
  return out


def agent_success(workdir: str, name: str = "heldout") -> dict | None:
  """Overall success {rate, lo, hi, episodes} of the run's evaluation `name`, or None."""
  path = os.path.join(eval_dir(workdir, name), "report.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    report = json.load(f)
  for g in report["groups"]:
    if g["family"] == "all":
      return {**g["success"], "episodes": g["episodes"]}
  return None


def _fmt(v: Any) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def _success_cell(s: dict | None) -> str:
  if s is None:
    return "-"
  return f"{100 * s['rate']:.0f}% [{100 * s['lo']:.0f}, {100 * s['hi']:.0f}] of {s['episodes']}"


def table(spec: dict, runs: list[sweeps.Run]) -> tuple[str, list[dict]]:
  columns = spec.get("columns", ["loss", "accuracy"])
  names = list(dict.fromkeys(eval_name(e) for e in spec.get("evals", [])))
  rows = []
  for r in runs:
    final = _final_eval(r.workdir)
    cfg = flatten(r.config)
    rows.append({"run": r.name, "objective": cfg.get("objective"), "family": cfg.get("model.family"),
                 "step": final.get("step"), **{c: final.get(c) for c in columns},
                 "params": final.get("train/num_params"), "tokens": final.get("train/tokens_seen"),
                 "flops": final.get("train/flops_seen"), "wall_s": final.get("train/wall_s"),
                 **{f"agent_{n}": agent_success(r.workdir, n) for n in names}})
  head = ["run", "objective", "family", "step", *columns, "params", "tokens", "FLOPs", "wall s",
          *(f"agent success, {n} [95% CI]" for n in names)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    agent = [_success_cell(row[f"agent_{n}"]) for n in names]
    cells = [row["run"], row["objective"], row["family"], row["step"], *(row[c] for c in columns),
             row["params"], row["tokens"], row["flops"], row["wall_s"], *agent]
    lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
  return "\n".join(lines) + "\n", rows


def run_ablation(spec: dict, root: str, only: str = "", dry_run: bool = False) -> int:
  """Runs every unfinished run and evaluation in order; returns the number that failed."""
  root = os.path.abspath(root)
  python = shlex.quote(sys.executable)
  runs = expand_runs(spec, root)
  selected = [r for r in runs if not only or re.search(only, r.name)]
  if spec.get("prepare") and not dry_run:
    spec["prepare"](root)
  failed = []
  for i, r in enumerate(selected):
    status = sweeps.run_status(r.workdir, r.num_steps)
    command = sweeps.train_command(r, sweeps._local_config_path(r.config_path), python)
    print(f"==> [{i + 1}/{len(selected)}] {r.name} ({status})", flush=True)
    if dry_run:
      print(f"(cd {shlex.quote(sweeps.REPO_ROOT)} && {shlex.join(command)})")
      continue
    if status == "finished":
      continue
    if sweeps._run_local(command, os.path.join(r.workdir, "sweep.log")):
      failed.append(r.name)
      print(f"ablation: {r.name} failed; runs after it that build on it will fail too", file=sys.stderr)
  for e in spec.get("evals", []):
    if only and not re.search(only, e["run"]):
      continue
    command = eval_command(e, root, python)
    done = os.path.exists(os.path.join(eval_dir(os.path.join(root, e["run"]), eval_name(e)), "report.json"))
    print(f"==> evaluate {e['run']} [{eval_name(e)}] ({'done' if done else 'new'})", flush=True)
    if dry_run:
      print(f"(cd {shlex.quote(sweeps.REPO_ROOT)} && {shlex.join(command)})")
      continue
    if not done and sweeps._run_local(command, os.path.join(root, e["run"], "evaluate.log")):
      failed.append(f"evaluate {e['run']} [{eval_name(e)}]")
  if not dry_run:
    text, rows = table(spec, runs)
    with open(os.path.join(root, "report.md"), "w") as f:
      f.write(text)
    with open(os.path.join(root, "report.json"), "w") as f:
      json.dump(rows, f, indent=1)
    print(text, end="")
  if failed:
    print(f"ablation: failed: {', '.join(failed)}", file=sys.stderr)
  return len(failed)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.ablation", description=__doc__.split("\n")[0])
  p.add_argument("--ablation", required=True, help="file defining get_ablation()")
  p.add_argument("--root", required=True, help="directory holding one WORKDIR per run")
  p.add_argument("--only", default="", help="regex: only runs (and evaluations) whose name matches")
  p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  args = p.parse_args(argv)
  try:
    spec = load_ablation(args.ablation)
    return 1 if run_ablation(spec, args.root, args.only, args.dry_run) else 0
  except sweeps.SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
