"""Exact arithmetic for the `calc` tool: a tokenizer and recursive-descent parser.

Grammar (^ is right-associative and binds tighter than unary minus):
  expr  := term (('+' | '-') term)*
  term  := unary (('*' | '/') unary)*
  unary := ('-' | '+') unary | power
  power := atom ('^' unary)?
  atom  := NUMBER | '(' expr ')'
Values are fractions.Fraction; nothing is ever handed to Python's eval. Bounds
on input length, literal digits, nesting, exponents and intermediate sizes keep
every call fast and small.
"""
from __future__ import annotations

import re
from fractions import Fraction

MAX_CHARS = 200
MAX_DIGITS = 15
MAX_DEPTH = 20
MAX_EXPONENT = 64
MAX_BITS = 256  # numerator and denominator of every intermediate value

_NUMBER_RE = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


class CalcError(ValueError):
  pass


def tokenize(text: str) -> list[str]:
  if len(text) > MAX_CHARS:
    raise CalcError(f"expression longer than {MAX_CHARS} characters")
  tokens, pos = [], 0
  while pos < len(text):
    ch = text[pos]
    if ch.isspace():
      pos += 1
      continue
    m = _NUMBER_RE.match(text, pos)
    if m:
      if sum(c != "." for c in m.group(0)) > MAX_DIGITS:
        raise CalcError(f"number with more than {MAX_DIGITS} digits")
      tokens.append(m.group(0))
      pos = m.end()
    elif ch in "+-*/^()":
      tokens.append(ch)
      pos += 1
    else:
      raise CalcError(f"unexpected character {ch!r}")
  if not tokens:
    raise CalcError("empty expression")
  return tokens


def _check_size(x: Fraction) -> Fraction:
  if max(abs(x.numerator).bit_length(), x.denominator.bit_length()) > MAX_BITS:
    raise CalcError("number too large")
  return x


class _Parser:

  def __init__(self, tokens: list[str]):
    self.tokens = tokens
    self.pos = 0
    self.depth = 0

  def peek(self) -> str | None:
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def take(self) -> str:
    tok = self.peek()
    if tok is None:
      raise CalcError("unexpected end of expression")
    self.pos += 1
    return tok

  def nest(self):
    self.depth += 1
    if self.depth > MAX_DEPTH:
      raise CalcError(f"nesting deeper than {MAX_DEPTH}")

  def expr(self) -> Fraction:
    value = self.term()
    while self.peek() in ("+", "-"):
      op = self.take()
      rhs = self.term()
      value = _check_size(value + rhs if op == "+" else value - rhs)
    return value

  def term(self) -> Fraction:
    value = self.unary()
    while self.peek() in ("*", "/"):
      op = self.take()
      rhs = self.unary()
      if op == "*":
        value = _check_size(value * rhs)
      elif rhs == 0:
        raise CalcError("division by zero")
      else:
        value = _check_size(value / rhs)
    return value

  def unary(self) -> Fraction:
    if self.peek() in ("-", "+"):
      op = self.take()
      self.nest()
      value = self.unary()
      self.depth -= 1
      return -value if op == "-" else value
    return self.power()

  def power(self) -> Fraction:
    base = self.atom()
    if self.peek() != "^":
      return base
    self.take()
    self.nest()
    exponent = self.unary()
    self.depth -= 1
    return _power(base, exponent)

  def atom(self) -> Fraction:
    tok = self.take()
    if tok == "(":
      self.nest()
      value = self.expr()
      self.depth -= 1
      if self.take() != ")":
        raise CalcError("expected ')'")
      return value
    if tok[0].isdigit() or tok[0] == ".":
      return Fraction(tok)
    raise CalcError(f"unexpected {tok!r}")


def _power(base: Fraction, exponent: Fraction) -> Fraction:
  if exponent.denominator != 1:
    raise CalcError("exponent must be an integer")
  e = exponent.numerator
  if abs(e) > MAX_EXPONENT:
    raise CalcError(f"exponent larger than {MAX_EXPONENT}")
  if base == 0 and e < 0:
    raise CalcError("division by zero")
  bits = max(abs(base.numerator).bit_length(), base.denominator.bit_length())
  if bits * abs(e) > MAX_BITS + 1:
    raise CalcError("number too large")
  return _check_size(base**e)


def evaluate(text: str) -> Fraction:
  """The exact value of an arithmetic expression, or CalcError."""
  parser = _Parser(tokenize(text))
  value = parser.expr()
  if parser.peek() is not None:
    raise CalcError(f"unexpected {parser.peek()!r}")
  return value
