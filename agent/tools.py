"""The tool registry: plain Python functions with JSON-schema signatures.

A call is validated against its schema before dispatch; the function gets the
decoded arguments and the episode's `ToolContext` (today's date, the ledger) and
nothing else: no file system, network, subprocess or clock. Every outcome is a
dict `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`; an
exception inside a tool becomes an error, and long outputs are truncated.
"""
from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any

from agent import calc as calc_lib
from agent import jsontext, numbers, schema, units, world
from agent.ledger import Ledger

TERMINAL = ("answer", "refuse", "clarify")
MAX_RESULT_CHARS = 120


class ToolError(Exception):
  """An error message meant for the agent (bad input, unknown entity, ...)."""


@dataclasses.dataclass
class ToolContext:
  """Per-episode state the tools may read or change."""
  today: datetime.date = datetime.date(2032, 1, 1)
  ledger: Ledger = dataclasses.field(default_factory=Ledger)


@dataclasses.dataclass(frozen=True)
class Tool:
  name: str
  description: str
  properties: dict  # argument name -> JSON schema; order is the canonical order
  fn: Callable[[dict, ToolContext], Any] | None = None  # None for terminal actions
  required: tuple[str, ...] | None = None  # None: every property is required

  @property
  def terminal(self) -> bool:
    return self.fn is None

  @property
  def parameters(self) -> dict:
    required = list(self.properties) if self.required is None else list(self.required)
    return {"type": "object", "properties": self.properties, "required": required,
            "additionalProperties": False}

  def signature(self) -> dict:
    return {"name": self.name, "description": self.description,
            "parameters": self.parameters}


def truncate(out: dict, max_chars: int = MAX_RESULT_CHARS) -> dict:
  """Bounds the text of a result or error; longer ones are cut and flagged."""
  key = "result" if out["ok"] else "error"
  text = out[key] if isinstance(out[key], str) else jsontext.dumps(out[key])
  if len(text) <= max_chars:
    return out
  return {"ok": out["ok"], key: text[:max_chars] + "...", "truncated": True}


class Registry:
  """An ordered, immutable set of tools addressable by name."""

  def __init__(self, tools: Iterable[Tool]):
    self._tools: dict[str, Tool] = {}
    for tool in tools:
      if tool.name in self._tools:
        raise ValueError(f"duplicate tool '{tool.name}'")
      schema.check_schema(tool.parameters, tool.name)
      self._tools[tool.name] = tool

  def __contains__(self, name: str) -> bool:
    return name in self._tools

  def __getitem__(self, name: str) -> Tool:
    return self._tools[name]

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self._tools)

  def subset(self, names: Iterable[str]) -> "Registry":
    """These tools (in registry order) plus the terminal actions."""
    wanted = set(names) | set(TERMINAL)
    unknown = wanted - set(self._tools)
    if unknown:
      raise KeyError(f"unknown tools {sorted(unknown)}; known: {', '.join(self._tools)}")
    return Registry(t for t in self._tools.values() if t.name in wanted)

  def with_tools(self, extra: Iterable[Tool]) -> "Registry":
    return Registry([*self._tools.values(), *extra])

  def signatures(self) -> list[dict]:
    return [t.signature() for t in self._tools.values()]

  def validate(self, name: str, arguments: Any) -> str | None:
    """None if `name(arguments)` is a well-formed call, else the error."""
    if name not in self._tools:
      return f"unknown tool '{name}'; allowed: {', '.join(self._tools)}"
    return schema.validate(self._tools[name].parameters, arguments)

  def call(self, name: str, arguments: Any, ctx: ToolContext,
           max_chars: int = MAX_RESULT_CHARS) -> dict:
    """Validates and runs one call; never raises."""
    err = self.validate(name, arguments)
    if err is None and self._tools[name].terminal:
      err = f"'{name}' ends the episode; it has no result"
    if err is not None:
      return truncate({"ok": False, "error": err}, max_chars)
    try:
      out = {"ok": True, "result": self._tools[name].fn(arguments, ctx)}
      jsontext.dumps(out)  # results must be JSON (no NaN, no objects)
    except (ToolError, calc_lib.CalcError, units.UnitError, numbers.NumberError,
            ValueError) as e:
      out = {"ok": False, "error": str(e) or type(e).__name__}
    except Exception as e:  # a bug in a tool must not end the evaluation
      out = {"ok": False, "error": f"internal error ({type(e).__name__})"}
    return truncate(out, max_chars)


# ---- built-in tools ---------------------------------------------------------

def _calc(args: dict, ctx: ToolContext) -> int | float:
  return numbers.format_number(calc_lib.evaluate(args["expr"]))


def _convert(args: dict, ctx: ToolContext) -> int | float:
  value = numbers.to_fraction(args["value"])
  if abs(value) > 10**12:
    raise ToolError("value too large")
  return numbers.format_number(units.convert(value, args["from"], args["to"]))


def _lookup(args: dict, ctx: ToolContext) -> Any:
  name = world.find(args["entity"])
  if name is None:
    raise ToolError(f"unknown entity '{args['entity']}'")
  attr = args["attr"].strip().lower()
  if attr not in world.attributes(name):
    raise ToolError(f"{name} has no '{args['attr']}'; has: "
                    + ", ".join(world.attributes(name)))
  return world.TABLE[name][attr]


_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_date(text: str, ctx: ToolContext) -> datetime.date:
  """'today' or an ISO date YYYY-MM-DD."""
  if text.strip().lower() == "today":
    return ctx.today
  if not _DATE_RE.fullmatch(text.strip()):
    raise ToolError(f"bad date '{text}'; use YYYY-MM-DD or today")
  try:
    return datetime.date.fromisoformat(text.strip())
  except ValueError as e:
    raise ToolError(f"bad date '{text}': {e}") from None


def _date_add(args: dict, ctx: ToolContext) -> str:
  try:
    return (parse_date(args["date"], ctx) + datetime.timedelta(days=args["days"])).isoformat()
  except OverflowError:
    raise ToolError("date out of range") from None


def _date_diff(args: dict, ctx: ToolContext) -> int:
  return (parse_date(args["end"], ctx) - parse_date(args["start"], ctx)).days


def _balance(args: dict, ctx: ToolContext) -> int:
  return ctx.ledger.balance(args["account"])


def _transfer(args: dict, ctx: ToolContext) -> dict:
  return ctx.ledger.transfer(args["from"], args["to"], args["amount"])


def _str(max_length: int = 60) -> dict:
  return {"type": "string", "minLength": 1, "maxLength": max_length}


BUILTIN = (
    Tool("calc", "Exact arithmetic: + - * / ^ and parentheses.",
         {"expr": _str(calc_lib.MAX_CHARS)}, _calc),
    Tool("convert", "Convert a value between units of one dimension.",
         {"value": {"type": "number"}, "from": _str(12), "to": _str(12)}, _convert),
    Tool("lookup", "An attribute of a known entity (city, person, product, event).",
         {"entity": _str(40), "attr": _str(20)}, _lookup),
    Tool("date_add", "The date a number of days after a date (or today).",
         {"date": _str(10), "days": {"type": "integer", "minimum": -100000,
                                     "maximum": 100000}}, _date_add),
    Tool("date_diff", "Days from start to end (dates or today).",
         {"start": _str(10), "end": _str(10)}, _date_diff),
    Tool("balance", "The balance of a ledger account.", {"account": _str(40)}, _balance),
    Tool("transfer", "Move an amount between ledger accounts.",
         {"from": _str(40), "to": _str(40),
          "amount": {"type": "integer", "minimum": 1, "maximum": 10**9}}, _transfer),
    Tool("answer", "Reply to the user and finish.", {"text": _str(200)}),
    Tool("refuse", "Decline a request no tool can do, and finish.", {"reason": _str(200)}),
    Tool("clarify", "Ask the user for missing information, and finish.",
         {"question": _str(200)}),
)
REGISTRY = Registry(BUILTIN)
NON_TERMINAL = tuple(t.name for t in BUILTIN if not t.terminal)
