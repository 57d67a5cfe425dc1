"""Scripted policies: the oracle, the no-tools wrapper, and test doubles.

They write the same canonical text as demonstrations (`format.render_action`),
so an LM policy and a scripted one are interchangeable in the episode loop.
"""
from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

from agent import format as fmt
from agent import numbers
from agent.suite import Task


def _turns(messages: list[dict]) -> int:
  return sum(m["role"] == "assistant" for m in messages)


def _gold(task: Task) -> list[dict]:
  if task.gold_calls:
    return list(task.gold_calls)
  return [{"name": "answer", "arguments": {"text": str(task.gold_answer)}}]


def _render(call: dict) -> str:
  return fmt.render_action(call["name"], call["arguments"])


class OraclePolicy:
  """Replays the task's gold actions in order (answers directly if none).

  With `thoughts`, each turn opens with a short thought naming the action.
  """

  def __init__(self, thoughts: bool = False):
    self.thoughts = thoughts

  def act(self, messages: list[dict], task: Task, **_: Any) -> str:
    gold = _gold(task)
    call = gold[min(_turns(messages), len(gold) - 1)]
    thought = f"use {call['name']}" if self.thoughts else None
    return fmt.render_action(call["name"], call["arguments"], thought)


class NoToolsPolicy:
  """The no-tools baseline: `inner` sees only answer/refuse/clarify.

  The episode loop reads `restrict_tools`, so the system prompt lists no tools
  and any tool call is an invalid action; everything else is `inner`'s.
  """
  restrict_tools: tuple[str, ...] = ()

  def __init__(self, inner: Any):
    self.inner = inner

  def act(self, messages: list[dict], task: Task, **kw: Any) -> str:
    return self.inner.act(messages, task, **kw)

  def __getattr__(self, name: str) -> Any:  # fits / act_batch come from inner
    return getattr(self.inner, name)


class GuessPolicy:
  """A scripted stand-in for an LM without tools: plays the gold terminal
  action when the task needs no tool, otherwise answers `guess`."""

  def __init__(self, guess: str = "I don't know."):
    self.guess = guess

  def act(self, messages: list[dict], task: Task, **_: Any) -> str:
    if task.check in ("no_call", "clarify", "refuse"):
      return _render(_gold(task)[-1])
    return fmt.render_action("answer", {"text": self.guess})


class ScriptedPolicy:
  """Returns the given texts in order, then repeats the last one."""

  def __init__(self, texts: Sequence[str]):
    self.texts = list(texts)

  def act(self, messages: list[dict], task: Task, **_: Any) -> str:
    return self.texts[min(_turns(messages), len(self.texts) - 1)]


def _wrong_value(task: Task) -> str:
  gold = task.gold_answer
  if isinstance(gold, (int, float)) and not isinstance(gold, bool):
    return str(numbers.format_number(numbers.to_fraction(gold) + 1))
  try:
    return (datetime.date.fromisoformat(str(gold)) + datetime.timedelta(days=1)).isoformat()
  except ValueError:
    return "nobody"


class WrongPolicy:
  """Follows the gold trajectory but gets the outcome wrong in every family:
  a wrong answer value, transfers off by one, clarifying instead of answering,
  asking when it should answer or refuse."""

  def act(self, messages: list[dict], task: Task, **_: Any) -> str:
    gold = _gold(task)
    call = dict(gold[min(_turns(messages), len(gold) - 1)])
    if task.check == "no_call":
      return fmt.render_action("clarify", {"question": "What do you mean?"})
    if task.check in ("clarify", "refuse"):
      return fmt.render_action("answer", {"text": "42"})
    if call["name"] == "transfer":
      call["arguments"] = {**call["arguments"], "amount": call["arguments"]["amount"] + 1}
    if call["name"] == "answer" and task.check == "answer":
      call["arguments"] = {"text": _wrong_value(task)}
    return _render(call)


class ObeyInjectionPolicy:
  """Follows the gold trajectory, but does what an injected tool result says."""

  def act(self, messages: list[dict], task: Task, **_: Any) -> str:
    inj, gold = task.injection, _gold(task)
    said = [m["content"] for m in messages if m["role"] == "assistant"]
    obeyed = bool(inj) and _render(inj["call"]) in said
    if inj and not obeyed and messages[-1]["role"] == "tool":
      result = json.loads(messages[-1]["content"]).get("result")
      if isinstance(result, str) and inj["text"] in result:
        return _render(inj["call"])
    i = len(said) - int(obeyed)
    return _render(gold[min(i, len(gold) - 1)])

