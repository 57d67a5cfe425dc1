"""Tools: exact calc that never evaluates Python, unit conversion, lookup, dates, ledger."""
import datetime
from fractions import Fraction

import pytest

from agent import calc, schema, units, world
from agent.ledger import Ledger
from agent.tools import NON_TERMINAL, REGISTRY, TERMINAL, Registry, Tool, ToolContext


def run(name, ctx=None, **arguments):
  return REGISTRY.call(name, arguments, ctx or ToolContext())


@pytest.mark.parametrize("expr,value", [
    ("1+2*3", 7), ("(1+2)*3", 9), ("2^3^2", 512), ("-2^2", -4), ("(-2)^2", 4),
    ("2^-1", 0.5), ("7/2", 3.5), ("1/3", 0.3333), ("0.1+0.2", 0.3), ("--3", 3),
    ("1.5*4", 6), (" 12 - 5 ", 7), (".5+.5", 1), ("10/4*2", 5), ("2-3-4", -5),
])
def test_calc_values(expr, value):
  assert run("calc", expr=expr) == {"ok": True, "result": value}


def test_calc_parser_bounds_without_the_schema():
  with pytest.raises(calc.CalcError, match="longer than"):
    calc.evaluate("1+" * 150 + "1")
  with pytest.raises(calc.CalcError, match="empty"):
    calc.evaluate("   ")


def test_calc_is_exact():
  assert calc.evaluate("1/3*3") == 1
  assert calc.evaluate("0.1+0.2") == Fraction(3, 10)


@pytest.mark.parametrize("expr,error", [
    ("__import__('os')", "unexpected character"),
    ("os.system('ls')", "unexpected character"),
    ("2**3", "unexpected '*'"),
    ("2^99999999", "exponent larger"),
    ("9^64^64", "too large"),
    ("999999999999999^64", "too large"),
    ("2^0.5", "exponent must be an integer"),
    ("1/0", "division by zero"),
    ("0^-1", "division by zero"),
    ("5/(3-3)", "division by zero"),
    ("1" * 16, "more than 15 digits"),
    ("1+" * 101 + "1", "at most 200 characters"),
    ("(" * 25 + "1" + ")" * 25, "nesting"),
    ("-" * 30 + "1", "nesting"),
    ("(1+2", "unexpected end"),
    ("1+2)", "unexpected ')'"),
    ("", "empty"),
    ("2 3", "unexpected '3'"),
    ("1e5", "unexpected character"),
])
def test_calc_errors_never_crash_or_eval(expr, error):
  out = run("calc", expr=expr) if expr else REGISTRY.call("calc", {"expr": " "}, ToolContext())
  assert out["ok"] is False and error in out["error"], out


def test_calc_bounds_intermediate_size():
  # Each step is allowed alone, but the product exceeds the bit bound.
  out = run("calc", expr="(2^60)*(2^60)*(2^60)*(2^60)*(2^60)")
  assert out == {"ok": False, "error": "number too large"}


@pytest.mark.parametrize("value,src,dst,want", [
    (100, "C", "F", 212), (32, "F", "C", 0), (0, "K", "C", -273.15), (-40, "C", "F", -40),
    (300, "K", "F", 80.33), (1, "mi", "km", 1.6093), (12, "km", "mi", 7.4565),
    (1, "ft", "in", 12), (1, "lb", "oz", 16), (2, "kg", "g", 2000), (1, "week", "h", 168),
    (1, "gal", "l", 3.7854), (1, "GiB", "MiB", 1024), (1500, "MB", "GB", 1.5),
    (3, "miles", "feet", 15840), (1, "hour", "minutes", 60),
])
def test_convert(value, src, dst, want):
  assert run("convert", value=value, **{"from": src, "to": dst}) == {"ok": True, "result": want}


def test_temperature_is_affine_not_linear():
  assert units.convert(Fraction(10), "C", "F") == 50  # not 18
  with pytest.raises(units.UnitError):
    units.factor("C", "F")


@pytest.mark.parametrize("src,dst,error", [
    ("kg", "m", "cannot convert mass"), ("furlong", "m", "unknown unit"), ("C", "km", "cannot"),
])
def test_convert_errors(src, dst, error):
  out = run("convert", value=1, **{"from": src, "to": dst})
  assert out["ok"] is False and error in out["error"]


def test_lookup_table_is_fictional_deterministic_and_split():
  assert world.TABLE["Varnel"]["kind"] == "city"
  assert run("lookup", entity="varnel", attr="Population") == {
      "ok": True, "result": world.TABLE["Varnel"]["population"]}
  for kind in world.KINDS:
    train, held = set(world.names(kind, "train")), set(world.names(kind, "heldout"))
    assert train and held and not train & held
  for name, row in world.TABLE.items():  # links stay inside the split
    for attr in world.LINKS[row["kind"]]:
      assert world.SPLIT[row[attr]] == world.SPLIT[name]
  assert "unknown entity" in run("lookup", entity="Paris", attr="population")["error"]
  assert "has: " in run("lookup", entity="Varnel", attr="color")["error"]


def test_dates_use_episode_today():
  ctx = ToolContext(today=datetime.date(2033, 2, 27))
  assert run("date_add", ctx, date="today", days=2)["result"] == "2033-03-01"
  assert run("date_add", ctx, date="2032-02-28", days=1)["result"] == "2032-02-29"
  assert run("date_diff", ctx, start="today", end="2033-03-01")["result"] == 2
  assert run("date_diff", ctx, start="2033-03-01", end="today")["result"] == -2
  assert "bad date" in run("date_add", ctx, date="next week", days=1)["error"]
  assert "bad date" in run("date_add", ctx, date="2033-02-30", days=1)["error"]
  assert "out of range" in run("date_add", ctx, date="9999-12-30", days=5)["error"]


def test_ledger_state_lives_in_the_context():
  ctx = ToolContext(ledger=Ledger({"Orvo": 100, "Kessa": 5}))
  assert run("balance", ctx, account="orvo")["result"] == 100
  assert run("transfer", ctx, **{"from": "Orvo", "to": "Kessa", "amount": 30})["result"] == {
      "Orvo": 70, "Kessa": 35}
  for args, err in [({"from": "Orvo", "to": "Kessa", "amount": 71}, "insufficient"),
                    ({"from": "Orvo", "to": "Orvo", "amount": 1}, "same account"),
                    ({"from": "Orvo", "to": "Zed", "amount": 1}, "unknown account"),
                    ({"from": "Orvo", "to": "Kessa", "amount": 0}, ">= 1")]:
    assert err in run("transfer", ctx, **args)["error"]
  assert ctx.ledger.snapshot() == {"Orvo": 70, "Kessa": 35}
  assert ToolContext().ledger.snapshot() == {}  # a fresh ledger per context


def test_registry_validates_before_dispatch_and_catches_exceptions():
  called = []

  def boom(args, ctx):
    called.append(args)
    raise KeyError("bug")

  reg = REGISTRY.with_tools([Tool("boom", "raises", {"x": {"type": "integer"}}, boom)])
  assert reg.call("boom", {"x": "1"}, ToolContext()) == {
      "ok": False, "error": "argument 'x' must be integer, got string"}
  assert not called  # a bad call never reaches the function
  assert reg.call("boom", {"x": 1}, ToolContext()) == {
      "ok": False, "error": "internal error (KeyError)"}
  assert "unknown tool" in reg.call("nope", {}, ToolContext())["error"]
  assert "ends the episode" in reg.call("answer", {"text": "hi"}, ToolContext())["error"]


def test_outputs_are_truncated():
  reg = Registry([Tool("long", "long", {}, lambda a, c: "x" * 500)])
  out = reg.call("long", {}, ToolContext(), max_chars=50)
  assert out == {"ok": True, "result": "x" * 50 + "...", "truncated": True}


def test_signatures_are_json_schema_without_extra_properties():
  for sig in REGISTRY.signatures():
    params = sig["parameters"]
    assert params["type"] == "object" and params["additionalProperties"] is False
    assert set(params["required"]) <= set(params["properties"])
    schema.check_schema(params)
  assert set(TERMINAL) | set(NON_TERMINAL) == set(REGISTRY.names)
  with pytest.raises(ValueError, match="unsupported"):
    schema.check_schema({"type": "array"})
  with pytest.raises(ValueError, match="duplicate"):
    Registry([REGISTRY["calc"], REGISTRY["calc"]])


@pytest.mark.parametrize("value,err", [
    ({"value": 1, "from": "m", "to": "ft"}, None),
    ({"value": 1.5, "from": "m", "to": "ft"}, None),
    ({"value": True, "from": "m", "to": "ft"}, "argument 'value' must be number, got boolean"),
    ({"value": "1", "from": "m", "to": "ft"}, "argument 'value' must be number, got string"),
    ({"from": "m", "to": "ft"}, "missing argument 'value'"),
    ({"value": 1, "from": "m", "to": "ft", "x": 1}, "unexpected argument 'x'"),
    ({"value": 1, "from": "", "to": "ft"}, "argument 'from' must have at least 1 characters"),
    ({"value": 1, "from": "m" * 13, "to": "ft"}, "argument 'from' must have at most 12 characters"),
])
def test_schema_validation(value, err):
  assert REGISTRY.validate("convert", value) == err


def test_schema_integer_and_enum():
  s = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 5},
                                         "c": {"type": "string", "enum": ["a", "b"]}}}
  assert schema.validate(s, {"n": 2.0}) == "argument 'n' must be integer, got number"
  assert schema.validate(s, {"n": 6}) == "argument 'n' must be <= 5"
  assert schema.validate(s, {"c": "z"}) == "argument 'c' must be one of: a, b"
  assert schema.validate(s, []) == "arguments must be object, got array"


def test_tool_modules_reach_nothing_outside_the_process():
  import ast
  import inspect

  from agent import jsontext, ledger, numbers, tools
  allowed = {"__future__", "collections", "dataclasses", "datetime", "decimal", "fractions",
             "json", "random", "re", "typing", "agent"}
  for mod in (tools, calc, units, world, ledger, numbers, schema, jsontext):
    tree = ast.parse(inspect.getsource(mod))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= allowed, (mod.__name__, imported - allowed)
    called = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not called & {"eval", "exec", "compile", "open", "__import__", "getattr"}, mod
