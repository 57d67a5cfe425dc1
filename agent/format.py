"""The text of an episode: system prompt, assistant turns, tool observations.

A conversation is a list of messages `{"role": "system|user|assistant|tool",
"content": str}` (the tuning issue's messages format; the chat template wraps
them in special tokens). An assistant turn is an optional one-line thought and
exactly one action line holding one compact JSON object:

    Thought: <one line>
    Action: {"name":"convert","arguments":{"value":12,"from":"km","to":"mi"}}

The observation is a tool message whose content is the tool's compact JSON
result, e.g. `{"ok":true,"result":7.4565}`. `render_*` give the canonical text
that demonstrations and the LM policy share; `parse_action` is the strict
inverse and says precisely what is wrong with anything else.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from agent import jsontext
from agent.tools import REGISTRY, TERMINAL, Registry

THOUGHT, ACTION = "Thought:", "Action:"
PROMPT_STYLES = ("names", "signatures", "none")


@dataclasses.dataclass(frozen=True)
class Call:
  name: str
  arguments: dict

  def to_json(self) -> dict:
    return {"name": self.name, "arguments": self.arguments}


@dataclasses.dataclass(frozen=True)
class Parsed:
  """A parsed assistant turn: a call, or an error with its kind."""
  call: Call | None = None
  thought: str | None = None
  error: str | None = None
  # missing_action | multiple_actions | format | bad_json | bad_action |
  # unknown_tool | bad_arguments
  kind: str | None = None

  @property
  def ok(self) -> bool:
    return self.call is not None


def _fail(kind: str, error: str) -> Parsed:
  return Parsed(error=error, kind=kind)


def parse_action(text: str, registry: Registry = REGISTRY) -> Parsed:
  """Strictly parses one assistant turn against the allowed tools."""
  lines = text.strip().split("\n")
  thought, actions = None, []
  for i, line in enumerate(lines):
    if line.startswith(THOUGHT):
      if i != 0:
        return _fail("format", "Thought must be the first line, before Action")
      thought = line[len(THOUGHT):].strip()
    elif line.startswith(ACTION):
      actions.append(line[len(ACTION):].strip())
    elif line.strip():
      where = "after" if actions else "before"
      return _fail("format", f"unexpected text {where} Action: {line[:40]!r}")
  if not actions:
    return _fail("missing_action", "missing 'Action: {...}' line")
  if len(actions) > 1:
    return _fail("multiple_actions", "one Action per turn")
  payload = actions[0]
  try:
    value, end = jsontext.raw_decode(payload)
  except ValueError as e:
    return _fail("bad_json", f"bad JSON: {e}")
  rest = payload[end:].strip()
  if rest.startswith("{"):
    return _fail("multiple_actions", "one JSON object per Action")
  if rest:
    return _fail("bad_json", f"bad JSON: extra text {rest[:20]!r}")
  if not isinstance(value, dict):
    return _fail("bad_action", 'action must be {"name":...,"arguments":{...}}')
  for key in ("name", "arguments"):
    if key not in value:
      return _fail("bad_action", f"action is missing '{key}'")
  for key in value:
    if key not in ("name", "arguments"):
      return _fail("bad_action", f"unexpected key '{key}' in action")
  name, arguments = value["name"], value["arguments"]
  if not isinstance(name, str):
    return _fail("bad_action", "'name' must be a string")
  if name not in registry:
    return _fail("unknown_tool", f"unknown tool '{name}'; allowed: {', '.join(registry.names)}")
  if not isinstance(arguments, dict):
    return _fail("bad_arguments", "'arguments' must be an object")
  err = registry.validate(name, arguments)
  if err:
    return _fail("bad_arguments", f"{name}: {err}")
  return Parsed(call=Call(name, arguments), thought=thought)


def canonical_arguments(name: str, arguments: dict, registry: Registry = REGISTRY) -> dict:
  """Arguments in the tool's declared property order (unknown keys last)."""
  if name not in registry:
    return dict(arguments)
  order = list(registry[name].properties)
  keys = sorted(arguments, key=lambda k: order.index(k) if k in order else len(order))
  return {k: arguments[k] for k in keys}


def render_action(name: str, arguments: dict, thought: str | None = None,
                  registry: Registry = REGISTRY) -> str:
  """The canonical assistant turn for a call."""
  body = jsontext.dumps({"name": name,
                         "arguments": canonical_arguments(name, arguments, registry)})
  line = f"{ACTION} {body}"
  if thought:
    return f"{THOUGHT} {' '.join(thought.split())}\n{line}"
  return line


def render_observation(result: dict) -> str:
  """The canonical tool-message content for a tool outcome."""
  order = ("ok", "result", "error", "truncated")
  return jsontext.dumps({k: result[k] for k in order if k in result})


def system_prompt(registry: Registry, style: str = "names", header: str = "") -> str | None:
  """The system message listing the allowed tools; None for style 'none'.

  'names' lists the non-terminal tools only (answer/refuse/clarify are always
  allowed and learned from demonstrations); 'signatures' lists every action
  with its argument names.
  """
  if style not in PROMPT_STYLES:
    raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
  if style == "none":
    return header or None
  if style == "names":
    names = [n for n in registry.names if n not in TERMINAL]
    body = "Tools: " + (", ".join(names) if names else "none")
  else:
    body = "Tools: " + ", ".join(
        f"{t}({','.join(registry[t].properties)})" for t in registry.names)
  return f"{header}\n{body}" if header else body


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """How the episode's opening messages look (configurable per run)."""
  style: str = "names"
  header: str = ""


def opening_messages(instruction: str, registry: Registry,
                     prompt: PromptConfig = PromptConfig()) -> list[dict]:
  system = system_prompt(registry, prompt.style, prompt.header)
  messages = [{"role": "system", "content": system}] if system else []
  return messages + [{"role": "user", "content": instruction}]


def message(role: str, content: str) -> dict[str, Any]:
  return {"role": role, "content": content}
