"""The LM policy: a trained run's model writes the assistant turns.

    policy = LMPolicy.from_workdir("runs/agent_sft")           # greedy
    policy = LMPolicy.from_workdir(run, temperature=0.7)        # sampled (pass^k)
    policy = LMPolicy.from_workdir(run, constrained=True)       # every action parses

Each turn is the conversation rendered with the chat template (lm/chat.py)
followed by `<|assistant|>`; the model continues until `<|end|>` (or eos, or
the token budget). The policy reads only the messages and the allowed tools,
never the task's gold fields. Sampling keys come from the episode's seed and
the turn index, so an episode's samples do not depend on the batch it ran in.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from agent.constrained import GrammarCache
from agent.lm_backend import Backend, JaxBackend
from agent.tools import Registry


def turn_seed(seed: int, messages: list[dict]) -> int:
  turn = sum(m["role"] == "assistant" for m in messages)
  return zlib.crc32(f"{seed}/{turn}".encode())


class LMPolicy:
  """Drives a `Backend` (see agent/lm_backend.py) through the episode protocol."""

  def __init__(self, backend: Backend, *, temperature: float = 0.0, constrained: bool = False,
               max_new_tokens: int = 96):
    from lm import chat
    self.backend, self.temperature, self.constrained = backend, temperature, constrained
    self.max_new_tokens = max_new_tokens  # what fits() leaves room for
    self._chat = chat
    self._grammars = GrammarCache(backend.tokenizer, backend.stop_ids) if constrained else None

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, **kw: Any) -> "LMPolicy":
    return cls(JaxBackend.from_workdir(workdir, step), **kw)

  def prompt_ids(self, messages: list[dict]) -> list[int]:
    return [int(i) for i in self._chat.render_prompt(messages, self.backend.tokenizer)]

  def fits(self, messages: list[dict]) -> bool:
    """Room for one more turn of `max_new_tokens` within the model's max_len."""
    return len(self.prompt_ids(messages)) + self.max_new_tokens <= self.backend.max_len

  def act(self, messages: list[dict], task: Any, *, max_new_tokens: int, seed: int,
          tools: Registry) -> str:
    return self.act_batch([messages], [task], max_new_tokens=max_new_tokens, seeds=[seed],
                          tools=[tools])[0]

  def act_batch(self, messages: Sequence[list[dict]], tasks: Sequence[Any], *,
                max_new_tokens: int, seeds: Sequence[int],
                tools: Sequence[Registry] | Registry) -> list[str]:
    if isinstance(tools, Registry):
      tools = [tools] * len(messages)
    prompts = [self.prompt_ids(m) for m in messages]
    constraints = ([self._grammars.constraint(r) for r in tools] if self.constrained else None)
    budget = min(max_new_tokens, self.backend.max_len - max(len(p) for p in prompts))
    outs = self.backend.generate(
        prompts, max_new_tokens=max(budget, 1), temperature=self.temperature,
        seeds=[turn_seed(s, m) for s, m in zip(seeds, messages)], constraints=constraints)
    return [self.backend.tokenizer.decode(ids) for ids in outs]
