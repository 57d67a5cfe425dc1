"""Scores and reports: success with Wilson intervals, call-level metrics, pass@k.

Per group (split x family, plus split x family x variant and split overall):
  success            rate of successful episodes, with a 95% Wilson interval
  validity           share of assistant turns that parsed and passed the schema
  tool_selection     first valid action names the gold first tool (tasks whose
                     gold starts with a tool call)
  arg_exact          ... and its arguments equal the gold ones (numbers by value)
  irrelevance_acc    no tool call and an answer/refusal (tasks checked `no_call`)
  false_refusal      refused although the task had a non-refusal outcome
  mean_steps         assistant turns per episode
  steps_over_optimal mean (steps - gold steps) over successful episodes
  reasons            termination-reason histogram
  pass_at_k, pass_hat_k  from the samples of each task (pass^k as in tau-bench:
                     all k of k sampled episodes succeed), averaged over tasks
Episodes of one task are correlated, so with several samples per task the
Wilson interval (which counts episodes) is optimistic; pass@1 is the same rate.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

from agent import numbers
from agent.episode import REASONS, EpisodeResult
from agent.suite import Task, load_suite  # noqa: F401  (load_suite: custom suites)
from agent.tools import TERMINAL

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
  """The Wilson score interval for a binomial proportion; None when n == 0."""
  if n == 0:
    return None
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def pass_at_k(n: int, c: int, k: int) -> float:
  """P(at least one of k draws without replacement from n samples succeeds)."""
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
  """P(all k draws without replacement from n samples succeed) (tau-bench pass^k)."""
  return math.comb(c, k) / math.comb(n, k)


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _same_value(a: Any, b: Any) -> bool:
  """Argument equality as a schema sees it: 12 == 12.0, but "12" != 12."""
  if _is_number(a) and _is_number(b):
    return numbers.to_fraction(a) == numbers.to_fraction(b)
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
  return type(a) is type(b) and a == b


def first_action(r: EpisodeResult) -> dict | None:
  """The agent's first valid action (tool call or terminal)."""
  for step in r.trajectory:
    if step["valid"]:
      return step["call"]
  return None


def _gold_first_tool(task: Task) -> dict | None:
  if task.gold_calls and task.gold_calls[0]["name"] not in TERMINAL:
    return task.gold_calls[0]
  return None


def _rate(hits: int, n: int) -> float | None:
  return hits / n if n else None


def group_metrics(results: Sequence[EpisodeResult]) -> dict:
  n = len(results)
  wins = sum(r.success for r in results)
  ci = wilson(wins, n)
  turns = sum(len(r.trajectory) for r in results)
  valid = sum(s["valid"] for r in results for s in r.trajectory)
  sel = [r for r in results if _gold_first_tool(r.task)]
  sel_hits = arg_hits = 0
  for r in sel:
    gold, got = _gold_first_tool(r.task), first_action(r)
    if got and got["name"] == gold["name"]:
      sel_hits += 1
      arg_hits += _same_value(got["arguments"], gold["arguments"])
  irr = [r for r in results if r.task.check == "no_call"]
  irr_hits = sum(not r.calls and r.reason in ("answered", "refused") for r in irr)
  should_not_refuse = [r for r in results if r.task.check not in ("no_call", "refuse")]
  refused = sum(r.reason == "refused" for r in should_not_refuse)
  won = [r for r in results if r.success]
  by_task: dict[str, list[bool]] = collections.defaultdict(list)
  for r in results:
    by_task[r.task.id].append(r.success)
  k_max = min((len(v) for v in by_task.values()), default=0)
  pass_k, pass_hat = {}, {}
  for k in range(1, k_max + 1):
    pass_k[k] = sum(pass_at_k(len(v), sum(v), k) for v in by_task.values()) / len(by_task)
    pass_hat[k] = sum(pass_hat_k(len(v), sum(v), k) for v in by_task.values()) / len(by_task)
  reasons = collections.Counter(r.reason for r in results)
  return {
      "episodes": n, "tasks": len(by_task),
      "success": {"rate": _rate(wins, n), "successes": wins,
                  "lo": ci[0] if ci else None, "hi": ci[1] if ci else None},
      "validity": _rate(valid, turns),
      "tool_selection": _rate(sel_hits, len(sel)), "arg_exact": _rate(arg_hits, len(sel)),
      "irrelevance_acc": _rate(irr_hits, len(irr)),
      "false_refusal": _rate(refused, len(should_not_refuse)),
      "mean_steps": _rate(sum(r.steps for r in results), n),
      "steps_over_optimal": _rate(sum(r.steps - r.task.optimal for r in won), len(won)),
      "mean_chars": _rate(sum(r.chars for r in results), n),
      "reasons": {k: reasons[k] for k in REASONS if reasons[k]},
      "pass_at_k": pass_k, "pass_hat_k": pass_hat,
  }


def summarize(results: Iterable[EpisodeResult], tasks: Iterable[Task] | None = None) -> dict:
  """The report as a dict. `tasks` (optional) replaces each result's task by id."""
  results = list(results)
  if tasks is not None:
    by_id = {t.id: t for t in tasks}
    results = [dataclasses.replace(r, task=by_id.get(r.task.id, r.task)) for r in results]
  groups: dict[tuple, list] = collections.defaultdict(list)
  for r in results:
    t = r.task
    groups[(t.split, t.family, "")].append(r)
    groups[(t.split, "all", "")].append(r)
    if t.variant:
      groups[(t.split, t.family, t.variant)].append(r)
  rows = []
  for (split, family, variant), rs in sorted(groups.items(), key=lambda kv: (
      kv[0][0], kv[0][1] == "all", kv[0][1], kv[0][2])):
    rows.append({"split": split, "family": family, "variant": variant, **group_metrics(rs)})
  return {"groups": [r for r in rows if not r["variant"]],
          "variants": [r for r in rows if r["variant"]]}


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None) -> str:
  return "-" if x is None else f"{x:.2f}"


def markdown_table(report: dict, variants: bool = False) -> str:
  head = ("| split | family | n | success [95% CI] | valid | select | args | irrel | "
          "false-ref | steps | +opt | pass@k | pass^k | reasons |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  rows = report["groups"] + (report["variants"] if variants else [])
  for g in rows:
    s = g["success"]
    k = max(g["pass_at_k"], default=None)
    name = g["family"] + (f"/{g['variant']}" if g["variant"] else "")
    reasons = " ".join(f"{key}:{v}" for key, v in g["reasons"].items())
    pk = "-" if k is None else f"@{k} {_pct(g['pass_at_k'][k])}"
    ph = "-" if k is None else f"^{k} {_pct(g['pass_hat_k'][k])}"
    lines.append(
        f"| {g['split']} | {name} | {g['episodes']} | {_pct(s['rate'])} "
        f"[{_pct(s['lo'])}, {_pct(s['hi'])}] | {_pct(g['validity'])} | "
        f"{_pct(g['tool_selection'])} | {_pct(g['arg_exact'])} | {_pct(g['irrelevance_acc'])} | "
        f"{_pct(g['false_refusal'])} | {_num(g['mean_steps'])} | {_num(g['steps_over_optimal'])} | "
        f"{pk} | {ph} | {reasons} |")
  return "\n".join(lines) + "\n"


def compare_markdown(reports: dict[str, dict]) -> str:
  """Success per (split, family) side by side, e.g. {"tuned": r1, "no-tools": r2}."""
  names = list(reports)
  keys = []
  for rep in reports.values():
    for g in rep["groups"]:
      if (g["split"], g["family"]) not in keys:
        keys.append((g["split"], g["family"]))
  cells = {name: {(g["split"], g["family"]): g["success"] for g in rep["groups"]}
           for name, rep in reports.items()}
  lines = ["| split | family | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]
  for key in keys:
    row = []
    for name in names:
      s = cells[name].get(key)
      row.append("-" if s is None else f"{_pct(s['rate'])} [{_pct(s['lo'])}, {_pct(s['hi'])}]")
    lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def write_report(results: Iterable[EpisodeResult], out_dir: str,
                 tasks: Iterable[Task] | None = None, meta: dict | None = None) -> dict:
  """Writes report.json, report.md and trajectories.jsonl into `out_dir`."""
  results = list(results)
  report = summarize(results, tasks)
  report["meta"] = dict(meta or {})
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=1, ensure_ascii=False)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown_table(report) + "\n" + markdown_table(
        {"groups": [], "variants": report["variants"]}, variants=True))
  with open(os.path.join(out_dir, "trajectories.jsonl"), "w") as f:
    for r in results:
      f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
  return report
