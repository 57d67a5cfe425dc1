"""Constrained decoding: a token mask under which every assistant turn parses.

The grammar is the canonical action line of the allowed tools,

    Action: {"name":"<tool>","arguments":{"<arg>":<value>,...}}

with each tool's arguments in their declared order, strings free-form within
JSON's rules (no escapes or control characters, schema min/max length),
numbers and integers as plain JSON numbers (no exponent; integers kept within
the schema's bounds by sign and digit count), booleans as true/false. The
terminal actions are ordinary tools here, so answer/refuse/clarify stay
reachable whenever the registry holds them (Registry.subset always adds them).

`Grammar` is a character-level state machine over hashable states; the mask of
a state comes from walking a trie of the tokens' texts (pruned at the first
invalid character) and is cached per state, so each state costs one walk per
process. Byte-fallback tokens count as their character when the byte is ASCII
and are never allowed otherwise (a lone UTF-8 byte is not text). A budget check
keeps the end reachable: a token is allowed only if the shortest completion
after it (one token per character at worst) still fits the tokens left.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from agent import jsontext
from agent.tools import Registry

_HEAD = 'Action: {"name":"'
_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_MAX_INT_DIGITS, _MAX_FRAC_DIGITS = 12, 6


def token_texts(tokenizer) -> list[str | None]:
  """Each id's text as it appears in decoded output; None for ids never allowed."""
  sp = tokenizer._sp  # the SentencePiece processor: pieces, byte and control flags
  out: list[str | None] = []
  for i in range(tokenizer.vocab_size):
    if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
      out.append(None)
    elif sp.is_byte(i):
      b = int(_BYTE.match(sp.id_to_piece(i)).group(1), 16)
      out.append(chr(b) if b < 0x80 else None)
    else:
      out.append(sp.id_to_piece(i).replace("\u2581", " ") or None)
  return out


class _Trie:

  def __init__(self, texts: list[str | None]):
    self.root: dict = {}
    for i, t in enumerate(texts):
      if not t:
        continue
      node = self.root
      for ch in t:
        node = node.setdefault(ch, {})
      node.setdefault(None, []).append(i)


def _value_spec(schema: dict, where: str) -> tuple:
  t = schema.get("type")
  if t == "string":
    return ("s", schema.get("minLength", 0), schema.get("maxLength", 10**6))
  if t in ("number", "integer"):
    lo, hi = schema.get("minimum"), schema.get("maximum")
    neg = lo is None or lo < 0
    digits = _MAX_INT_DIGITS
    bound = max(abs(v) for v in (lo, hi) if v is not None) if (lo is not None and hi is not None) else None
    if t == "integer" and bound is not None:
      digits = max(1, min(digits, len(str(int(bound))) - 1))
    return ("n", t == "integer", neg, digits, lo is not None and lo >= 1)
  if t == "boolean":
    return ("b",)
  raise ValueError(f"constrained decoding does not support {where} of type {t!r}")


class Grammar:
  """Character states of one registry's action lines; `mask(state, remaining)`."""

  def __init__(self, registry: Registry, texts: list[str | None], stop_ids: tuple[int, ...]):
    self.vocab = len(texts)
    self.trie = _Trie(texts)
    self.texts = texts
    self.stop_ids = stop_ids
    self.tools: dict[str, list[tuple]] = {}
    self.heads: dict[str, str] = {}
    for name in registry.names:
      tool = registry[name]
      segs: list[tuple] = []
      lit = ""
      for j, (arg, schema) in enumerate(tool.properties.items()):
        lit += ("," if j else "") + jsontext.dumps(arg) + ":"
        segs.append(("lit", lit))
        segs.append(("val", _value_spec(schema, f"{name}.{arg}")))
        lit = ""
      segs.append(("lit", "}}"))
      self.tools[name] = segs
      self.heads[name] = _HEAD + name + '","arguments":{'
    self._seg_min = {name: self._suffix_mins(segs) for name, segs in self.tools.items()}
    self._cache: dict[Any, tuple[np.ndarray, np.ndarray, bool]] = {}

  # ---- states: ("head", text) | ("lit", tool, seg, offset) | ("val", tool, seg, vstate) | ("end",)
  start = ("head", "")

  @staticmethod
  def _value_min(spec: tuple, v: Any) -> int:
    if spec[0] == "s":
      return 2 + spec[1] if v is None else max(0, spec[1] - v) + 1
    if spec[0] == "n":
      return 1 if (v is None or not _complete_number(v)) else 0
    return 4 if v is None else min(len(w) - len(v) for w in ("true", "false") if w.startswith(v))

  def _suffix_mins(self, segs: list[tuple]) -> list[int]:
    out = [0] * (len(segs) + 1)
    for k in range(len(segs) - 1, -1, -1):
      kind, x = segs[k]
      out[k] = out[k + 1] + (len(x) if kind == "lit" else self._value_min(x, None))
    return out

  def min_finish(self, state: tuple) -> int:
    """Fewest characters from `state` to a complete action line."""
    kind = state[0]
    if kind == "end":
      return 0
    if kind == "head":
      text = state[1]
      return min(len(h) - len(text) + self._seg_min[n][0]
                 for n, h in self.heads.items() if h.startswith(text))
    _, tool, seg, x = state
    segs, rest = self.tools[tool], self._seg_min[tool][seg + 1]
    if kind == "lit":
      return len(segs[seg][1]) - x + rest
    return self._value_min(segs[seg][1], x) + rest

  def _enter(self, tool: str, seg: int) -> tuple:
    segs = self.tools[tool]
    if seg == len(segs):
      return ("end",)
    return ("lit", tool, seg, 0) if segs[seg][0] == "lit" else ("val", tool, seg, None)

  def step(self, state: tuple, ch: str) -> tuple | None:
    """The state after one more character, or None if it breaks the grammar."""
    kind = state[0]
    if kind == "end":
      return None
    if kind == "head":
      text = state[1] + ch
      for name, head in self.heads.items():
        if head == text:
          return self._enter(name, 0)
      return ("head", text) if any(h.startswith(text) for h in self.heads.values()) else None
    _, tool, seg, x = state
    spec = self.tools[tool][seg][1]
    if kind == "lit":
      if spec[x] != ch:
        return None
      return self._enter(tool, seg + 1) if x + 1 == len(spec) else ("lit", tool, seg, x + 1)
    v = _value_step(spec, x, ch)
    if v == "done":  # the value closed with this character (a string's quote)
      return self._enter(tool, seg + 1)
    if v is not None:
      return ("val", tool, seg, v)
    if spec[0] == "n" and x is not None and _complete_number(x):
      return self.step(self._enter(tool, seg + 1), ch)  # the number ended before ch
    if spec[0] == "b" and x in ("true", "false"):
      return self.step(self._enter(tool, seg + 1), ch)
    return None

  def _walk(self, state: tuple) -> tuple[np.ndarray, np.ndarray, bool]:
    ids, fins = [], []
    stack = [(self.trie.root, state)]
    while stack:
      node, s = stack.pop()
      for ch, child in node.items():
        if ch is None:
          continue
        s2 = self.step(s, ch)
        if s2 is None:
          continue
        if None in child:
          fin = self.min_finish(s2)
          for i in child[None]:
            ids.append(i)
            fins.append(fin)
        stack.append((child, s2))
    return np.asarray(ids, np.int64), np.asarray(fins, np.int64), state[0] == "end"

  def mask(self, state: tuple, remaining: int) -> np.ndarray:
    """Allowed next ids with `remaining` tokens left (including the stop token)."""
    if state not in self._cache:
      self._cache[state] = self._walk(state)
    ids, fins, can_stop = self._cache[state]
    out = np.zeros(self.vocab, bool)
    keep = ids[fins <= remaining - 2]  # after it: the completion, then the stop token
    if not len(keep) and not can_stop:
      keep = ids  # the budget cannot be met: stay in the grammar anyway
    out[keep] = True
    if can_stop:
      out[list(self.stop_ids)] = True
    return out


def _complete_number(text: str) -> bool:
  return bool(text) and text[-1].isdigit()


def _value_step(spec: tuple, v: Any, ch: str) -> Any:
  """The value's next sub-state, "done" when `ch` closes it, None if `ch` is not part of it."""
  if spec[0] == "s":
    _, lo, hi = spec
    if v is None:
      return 0 if ch == '"' else None
    if ch == '"':
      return "done" if v >= lo else None
    if ch == "\\" or ord(ch) < 0x20 or v >= hi:
      return None
    return v + 1
  if spec[0] == "b":
    text = (v or "") + ch
    return text if any(w.startswith(text) for w in ("true", "false")) else None
  _, integer, neg, digits, positive = spec
  text = v or ""
  body = text.lstrip("-")
  if not text:
    if ch == "-":
      return "-" if neg else None
    if ch.isdigit() and ch in "0123456789":
      return None if (ch == "0" and positive) else ch
    return None
  if "." in body:
    frac = body.split(".")[1]
    return text + ch if ch in "0123456789" and len(frac) < _MAX_FRAC_DIGITS else None
  if ch in "0123456789":
    if body == "0" or len(body) >= digits:
      return None
    if not body and ch == "0":  # "-0" is not worth allowing
      return None
    return text + ch
  if ch == "." and not integer and body:
    return text + ch
  return None


class ActionConstraint:
  """One row's constraint for a backend: the grammar state of the turn so far."""

  def __init__(self, grammar: Grammar):
    self.grammar, self.state = grammar, Grammar.start

  def mask(self, remaining: int) -> np.ndarray:
    return self.grammar.mask(self.state, remaining)

  def advance(self, token: int) -> None:
    text = self.grammar.texts[token]
    for ch in text or "":
      nxt = self.grammar.step(self.state, ch)
      if nxt is None:
        raise ValueError(f"token {token} ({text!r}) breaks the action grammar")
      self.state = nxt


class GrammarCache:
  """One Grammar per distinct tool set (episodes share them, and their masks)."""

  def __init__(self, tokenizer, stop_ids: tuple[int, ...]):
    self.texts = token_texts(tokenizer)
    self.stop_ids = tuple(stop_ids)
    self._grammars: dict[str, Grammar] = {}

  def constraint(self, registry: Registry) -> ActionConstraint:
    key = jsontext.dumps(registry.signatures())
    if key not in self._grammars:
      self._grammars[key] = Grammar(registry, self.texts, self.stop_ids)
    return ActionConstraint(self._grammars[key])
