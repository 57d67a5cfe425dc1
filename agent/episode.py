"""The episode loop: a policy writes turns, tools answer, limits end it.

`Episode` is a step-wise state machine (so many episodes can advance in
lockstep for a batched LM policy); `run_episode` and `run_episodes` drive it.
Every episode ends with one reason from `REASONS` and keeps its full
trajectory, JSON-serialisable.

A policy is any object with
    act(messages, task, *, max_new_tokens, seed, tools) -> str
returning the next assistant turn's text. `seed` is fixed per episode (the
policy folds in the turn index for per-step keys); `tools` is the Registry of
actions this episode allows (what a constrained decoder builds its grammar
from). An LM policy must not read the task's gold fields. Optional hooks:
    fits(messages) -> bool      may the conversation grow by one more turn?
                                (else a character budget decides)
    act_batch(list_of_messages, tasks, *, max_new_tokens, seeds, tools) -> list[str]
                                one turn for many episodes (lists aligned)
    restrict_tools              a tuple of tool names the policy may use
                                (the no-tools baseline allows none)
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

from agent import format as fmt
from agent import jsontext, outcome
from agent.ledger import Ledger
from agent.suite import Task
from agent.tools import REGISTRY, Registry, ToolContext, truncate

REASONS = ("answered", "refused", "clarified", "max_steps", "invalid_limit", "loop",
           "context_limit")
_TERMINAL_REASON = {"answer": "answered", "refuse": "refused", "clarify": "clarified"}


class Policy(Protocol):

  def act(self, messages: list[dict], task: Task, *, max_new_tokens: int, seed: int,
          tools: Registry) -> str: ...


@dataclasses.dataclass(frozen=True)
class Limits:
  max_steps: int = 8  # assistant turns
  max_new_tokens: int = 96  # per turn, passed to the policy
  max_invalid: int = 2  # the episode ends at this many unparseable/ill-typed actions
  max_identical: int = 2  # ... or when one (call, result) pair occurs this many times
  max_context_chars: int = 2048  # used when the policy has no fits()
  max_result_chars: int = 120  # tool outputs are truncated to this


@dataclasses.dataclass
class EpisodeResult:
  task: Task
  reason: str
  success: bool
  steps: int  # assistant turns taken
  invalid: int  # turns that did not parse or failed schema validation
  calls: list[dict]  # valid non-terminal calls, in order
  terminal: dict | None  # the terminal action, if the episode ended with one
  trajectory: list[dict]  # one record per assistant turn
  messages: list[dict]
  ledger_before: dict
  ledger_after: dict
  sample: int = 0
  seed: int = 0

  @property
  def chars(self) -> int:
    return sum(len(m["content"]) for m in self.messages)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["task"] = self.task.to_json()
    d["chars"] = self.chars
    return d

  @classmethod
  def from_json(cls, d: dict) -> "EpisodeResult":
    d = dict(d)
    d.pop("chars", None)
    d["task"] = Task.from_json(d["task"])
    return cls(**d)


def episode_seed(seed: int, task_id: str, sample: int) -> int:
  """A stable per-episode seed (independent of Python's hash randomisation)."""
  return zlib.crc32(f"{seed}/{task_id}/{sample}".encode())


class Episode:
  """One task's conversation and environment, advanced one turn at a time."""

  def __init__(self, task: Task, limits: Limits = Limits(), *, registry: Registry = REGISTRY,
               prompt: fmt.PromptConfig = fmt.PromptConfig(),
               restrict_tools: Sequence[str] | None = None, sample: int = 0, seed: int = 0):
    allowed = [t for t in task.tools if restrict_tools is None or t in restrict_tools]
    self.task, self.limits, self.sample, self.seed = task, limits, sample, seed
    self.registry = registry.subset(allowed)
    self.ctx = ToolContext(today=datetime.date.fromisoformat(task.today),
                           ledger=Ledger(task.ledger))
    self.messages = fmt.opening_messages(task.instruction, self.registry, prompt)
    self.reason: str | None = None
    self.steps = self.invalid = 0
    self.calls: list[dict] = []
    self.terminal: dict | None = None
    self.trajectory: list[dict] = []
    self._fault_uses: collections.Counter = collections.Counter()
    self._injected = False
    self._pairs: collections.Counter = collections.Counter()

  def copy_messages(self) -> list[dict]:
    """What a policy sees: a copy, so it cannot alter the record."""
    return [dict(m) for m in self.messages]

  @property
  def done(self) -> bool:
    return self.reason is not None

  def check_context(self, policy: Any) -> bool:
    """Ends the episode (context_limit) if the policy cannot take another turn."""
    fits = getattr(policy, "fits", None)
    ok = fits(self.copy_messages()) if fits else (
        sum(len(m["content"]) for m in self.messages) <= self.limits.max_context_chars)
    if not ok:
      self.reason = "context_limit"
    return ok

  def _dispatch(self, call: fmt.Call) -> tuple[dict, str]:
    """Runs a call through the task's faults and injection; (result, what happened)."""
    for i, fault in enumerate(self.task.faults):
      times = fault.get("times", 1)
      if fault["tool"] == call.name and (times < 0 or self._fault_uses[i] < times):
        self._fault_uses[i] += 1
        error = {"ok": False, "error": fault["error"]}
        return truncate(error, self.limits.max_result_chars), "fault"
    result = self.registry.call(call.name, call.arguments, self.ctx, self.limits.max_result_chars)
    inj = self.task.injection
    if inj and not self._injected and inj["tool"] == call.name and result["ok"]:
      self._injected = True
      value = result["result"]
      text = value if isinstance(value, str) else jsontext.dumps(value)
      return truncate({"ok": True, "result": f"{text}. {inj['text']}"},
                      self.limits.max_result_chars), "injection"
    return result, ""

  def step(self, text: str) -> None:
    """Consumes one assistant turn and appends what follows from it."""
    if self.done:
      raise RuntimeError("episode is over")
    text = text.strip()
    self.steps += 1
    self.messages.append(fmt.message("assistant", text))
    parsed = fmt.parse_action(text, self.registry)
    record: dict[str, Any] = {"text": text, "valid": parsed.ok, "kind": parsed.kind,
                              "error": parsed.error, "thought": parsed.thought,
                              "call": parsed.call.to_json() if parsed.ok else None,
                              "observation": None, "event": ""}
    self.trajectory.append(record)
    if not parsed.ok:
      self.invalid += 1
      obs = truncate({"ok": False, "error": parsed.error}, self.limits.max_result_chars)
      record["observation"] = obs
      self.messages.append(fmt.message("tool", fmt.render_observation(obs)))
      if self.invalid >= self.limits.max_invalid:
        self.reason = "invalid_limit"
    elif parsed.call.name in _TERMINAL_REASON:
      self.terminal = parsed.call.to_json()
      self.reason = _TERMINAL_REASON[parsed.call.name]
    else:
      obs, event = self._dispatch(parsed.call)
      record["observation"], record["event"] = obs, event
      self.calls.append(parsed.call.to_json())
      self.messages.append(fmt.message("tool", fmt.render_observation(obs)))
      pair = (jsontext.key(parsed.call.to_json()), jsontext.key(obs))
      self._pairs[pair] += 1
      if self._pairs[pair] >= self.limits.max_identical:
        self.reason = "loop"
    if not self.done and self.steps >= self.limits.max_steps:
      self.reason = "max_steps"

  def result(self) -> EpisodeResult:
    if not self.done:
      raise RuntimeError("episode is not over")
    before, after = dict(self.task.ledger), self.ctx.ledger.snapshot()
    success = outcome.check(self.task, self.reason, self.terminal, self.calls, before, after)
    return EpisodeResult(task=self.task, reason=self.reason, success=success, steps=self.steps,
                         invalid=self.invalid, calls=self.calls, terminal=self.terminal,
                         trajectory=self.trajectory, messages=self.messages,
                         ledger_before=before, ledger_after=after, sample=self.sample,
                         seed=self.seed)


def run_episode(task: Task, policy: Policy, limits: Limits = Limits(), *, sample: int = 0,
                seed: int = 0, registry: Registry = REGISTRY,
                prompt: fmt.PromptConfig = fmt.PromptConfig()) -> EpisodeResult:
  """Runs one episode of `task` with `policy` until it ends; never raises for
  anything the policy writes."""
  ep = Episode(task, limits, registry=registry, prompt=prompt, sample=sample,
               restrict_tools=getattr(policy, "restrict_tools", None),
               seed=episode_seed(seed, task.id, sample))
  while not ep.done and ep.check_context(policy):
    ep.step(policy.act(ep.copy_messages(), task, max_new_tokens=limits.max_new_tokens,
                       seed=ep.seed, tools=ep.registry))
  return ep.result()


def run_episodes(tasks: Sequence[Task], policy: Policy, limits: Limits = Limits(), *,
                 samples: int = 1, seed: int = 0, registry: Registry = REGISTRY,
                 prompt: fmt.PromptConfig = fmt.PromptConfig()) -> list[EpisodeResult]:
  """`samples` episodes per task (for pass@k / pass^k), ordered by task then sample.

  A policy with `act_batch` advances all unfinished episodes together, one
  turn per call; otherwise episodes run one after another.
  """
  episodes = [Episode(t, limits, registry=registry, prompt=prompt, sample=s,
                      restrict_tools=getattr(policy, "restrict_tools", None),
                      seed=episode_seed(seed, t.id, s))
              for t in tasks for s in range(samples)]
  batch = getattr(policy, "act_batch", None)
  if batch is None:
    for ep in episodes:
      while not ep.done and ep.check_context(policy):
        ep.step(policy.act(ep.copy_messages(), ep.task, max_new_tokens=limits.max_new_tokens,
                           seed=ep.seed, tools=ep.registry))
  else:
    while True:
      live = [ep for ep in episodes if not ep.done and ep.check_context(policy)]
      if not live:
        break
      texts = batch([ep.copy_messages() for ep in live], [ep.task for ep in live],
                    max_new_tokens=limits.max_new_tokens, seeds=[ep.seed for ep in live],
                    tools=[ep.registry for ep in live])
      for ep, text in zip(live, texts, strict=True):
        ep.step(text)
  return [ep.result() for ep in episodes]
