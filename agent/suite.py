"""Tasks: the unit of evaluation, their JSONL form, and split hygiene checks.

A task is an instruction plus everything needed to run and score it offline:
the allowed tools, the episode's "today", the initial ledger, the gold action
sequence (terminal action included) and how the outcome is checked:
  answer   the episode is answered and the answer's value equals gold_answer
  ledger   the episode is answered and the final ledger equals the state after
           replaying the gold transfers
  clarify  the agent asked for clarification without calling a tool
  refuse   the agent refused
  no_call  the agent answered or refused without calling a tool (irrelevance)
Any check other than `ledger` also fails if the ledger changed.
A custom suite is a JSONL file of such tasks; see `load_suite`.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterable
from typing import Any

from agent.tools import NON_TERMINAL, REGISTRY, TERMINAL

CHECKS = ("answer", "ledger", "clarify", "refuse", "no_call")
ANSWER_TYPES = ("number", "date", "text")


@dataclasses.dataclass(frozen=True)
class Task:
  id: str
  instruction: str
  tools: tuple[str, ...]  # allowed non-terminal tools (terminal ones always are)
  check: str = "answer"
  gold_answer: Any = None
  answer_type: str | None = None  # number | date | text; None: inferred
  gold_calls: tuple[dict, ...] = ()  # {"name", "arguments"}, terminal action last
  family: str = "custom"
  split: str = "custom"
  variant: str = ""  # finer group inside a family (e.g. composition depth)
  template: str = ""  # id of the paraphrase template the instruction came from
  today: str = "2032-01-01"
  ledger: dict = dataclasses.field(default_factory=dict)
  faults: tuple[dict, ...] = ()  # {"tool", "error", "times"}: injected tool errors
  injection: dict | None = None  # {"tool", "text", "call"}: text appended to a result
  optimal_steps: int = 0  # assistant turns of the gold trajectory (0: len(gold_calls))

  @property
  def optimal(self) -> int:
    return self.optimal_steps or len(self.gold_calls) or 1

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    for key in ("tools", "gold_calls", "faults"):
      d[key] = list(d[key])
    return d

  @classmethod
  def from_json(cls, d: dict) -> "Task":
    d = dict(d)
    for key in ("tools", "gold_calls", "faults"):
      if key in d:
        d[key] = tuple(d[key])
    return cls(**d)


class SuiteError(ValueError):
  pass


def validate_task(task: Task, where: str = "task") -> None:
  """Raises SuiteError naming the field and the fix."""
  if not task.id or not task.instruction:
    raise SuiteError(f"{where}: 'id' and 'instruction' must be non-empty strings")
  unknown = [t for t in task.tools if t not in NON_TERMINAL]
  if unknown:
    raise SuiteError(f"{where}: unknown tools {unknown} in 'tools'; "
                     f"choose from {', '.join(NON_TERMINAL)} (answer/refuse/clarify are implied)")
  if task.check not in CHECKS:
    raise SuiteError(f"{where}: 'check' must be one of {CHECKS}, got {task.check!r}")
  if task.answer_type is not None and task.answer_type not in ANSWER_TYPES:
    raise SuiteError(f"{where}: 'answer_type' must be one of {ANSWER_TYPES}")
  if task.check == "ledger" and not any(c.get("name") == "transfer" for c in task.gold_calls):
    raise SuiteError(f"{where}: check 'ledger' needs transfer calls in 'gold_calls'")
  try:
    datetime.date.fromisoformat(task.today)
  except (TypeError, ValueError):
    raise SuiteError(f"{where}: 'today' must be YYYY-MM-DD, got {task.today!r}") from None
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in task.ledger.values()):
    raise SuiteError(f"{where}: 'ledger' must map account names to integer balances")
  registry = REGISTRY.subset(task.tools)
  for i, call in enumerate(task.gold_calls):
    if not isinstance(call, dict) or set(call) != {"name", "arguments"}:
      raise SuiteError(f"{where}: gold_calls[{i}] must be {{\"name\":...,\"arguments\":{{...}}}}")
    err = registry.validate(call["name"], call["arguments"])
    if err:
      raise SuiteError(f"{where}: gold_calls[{i}]: {err}")
  if task.gold_calls and task.gold_calls[-1]["name"] not in TERMINAL:
    raise SuiteError(f"{where}: the last gold call must be one of {TERMINAL}")
  if task.check == "answer" and task.gold_answer is None:
    raise SuiteError(f"{where}: check 'answer' needs 'gold_answer'")


def _infer_check(d: dict) -> str:
  if "check" in d:
    return d["check"]
  if any(c.get("name") == "transfer" for c in d.get("gold_calls", ())):
    return "ledger"
  if "gold_answer" in d:
    return "answer"
  last = (d.get("gold_calls") or [{}])[-1].get("name")
  return {"clarify": "clarify", "refuse": "refuse"}.get(last, "answer")


def load_suite(path: str) -> list[Task]:
  """Tasks from a JSONL file, one object per line.

  Required: `instruction`, `tools`, and `gold_answer` or `gold_calls`.
  Optional: every other Task field; `id` defaults to "<line number>", `check`
  is inferred (transfers in gold_calls: ledger; gold_answer: answer; a gold
  clarify/refuse: that).
  """
  fields = {f.name for f in dataclasses.fields(Task)}
  tasks, ids = [], set()
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{n}"
      try:
        d = json.loads(line)
      except json.JSONDecodeError as e:
        raise SuiteError(f"{where}: not JSON ({e})") from None
      if not isinstance(d, dict):
        raise SuiteError(f"{where}: each line must be a JSON object")
      extra = set(d) - fields
      if extra:
        raise SuiteError(f"{where}: unknown fields {sorted(extra)}; known: {sorted(fields)}")
      if "instruction" not in d or "tools" not in d:
        raise SuiteError(f"{where}: 'instruction' and 'tools' are required")
      if "gold_answer" not in d and "gold_calls" not in d:
        raise SuiteError(f"{where}: give 'gold_answer' or 'gold_calls'")
      if not isinstance(d["tools"], list) or not all(isinstance(t, str) for t in d["tools"]):
        raise SuiteError(f"{where}: 'tools' must be a list of tool names")
      d["tools"] = [t for t in d["tools"] if t not in TERMINAL]  # always allowed anyway
      d.setdefault("id", str(n))
      d["check"] = _infer_check(d)
      try:
        task = Task.from_json(d)
      except TypeError as e:
        raise SuiteError(f"{where}: {e}") from None
      validate_task(task, where)
      if task.id in ids:
        raise SuiteError(f"{where}: duplicate id {task.id!r}")
      ids.add(task.id)
      tasks.append(task)
  return tasks


def save_suite(tasks: Iterable[Task], path: str) -> None:
  with open(path, "w") as f:
    for task in tasks:
      f.write(json.dumps(task.to_json(), ensure_ascii=False) + "\n")


def normalise_instruction(text: str) -> str:
  return " ".join(text.casefold().split())


def overlap(train: Iterable[Task], heldout: Iterable[Task]) -> list[str]:
  """Held-out instructions that also occur (normalised) in the training tasks."""
  seen = {normalise_instruction(t.instruction) for t in train}
  return sorted({t.instruction for t in heldout if normalise_instruction(t.instruction) in seen})


def check_no_overlap(train: Iterable[Task], heldout: Iterable[Task]) -> None:
  """Raises SuiteError if any held-out instruction appears in training data."""
  found = overlap(train, heldout)
  if found:
    raise SuiteError(f"{len(found)} held-out instructions occur in training, e.g. {found[0]!r}")
