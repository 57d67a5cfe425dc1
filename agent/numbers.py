"""Number formatting shared by tools and outcome checks.

Tools compute with exact Fractions and report JSON numbers: integers stay
integers, anything else is rounded to `DECIMALS` places, so observations are
short and the same value always prints the same way.
"""
from __future__ import annotations

import decimal
import re
from fractions import Fraction

DECIMALS = 4
MAX_ABS = 10**15  # results beyond this are errors, not 16-digit floats

_NUMBER_RE = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])-?\d+(?:\.\d+)?")


class NumberError(ValueError):
  pass


def to_fraction(x: int | float | str | Fraction) -> Fraction:
  """Exact value of a JSON number (floats via their shortest decimal text)."""
  if isinstance(x, bool):
    raise NumberError("booleans are not numbers")
  if isinstance(x, float):
    if x != x or x in (float("inf"), float("-inf")):
      raise NumberError("not a finite number")
    return Fraction(repr(x))
  return Fraction(x)


def format_number(x: Fraction) -> int | float:
  """Fraction -> JSON number: int when integral, else rounded to DECIMALS."""
  if abs(x) >= MAX_ABS:
    raise NumberError("result too large")
  r = round(x, DECIMALS)
  if r.denominator == 1:
    return int(r)
  return float(decimal.Decimal(r.numerator) / decimal.Decimal(r.denominator))


def number_text(x: int | float) -> str:
  """How a JSON number prints in observations and answers."""
  return str(x)


def find_numbers(text: str) -> list[tuple[Fraction, int]]:
  """Numbers written in text, with the count of decimals each was written with.

  Thousands separators ("48,210") are accepted; ISO dates are not numbers here
  because callers that expect dates use `find_dates` instead.
  """
  out = []
  for m in _NUMBER_RE.finditer(text):
    s = m.group(0).replace(",", "")
    decimals = len(s.split(".")[1]) if "." in s else 0
    out.append((Fraction(s), decimals))
  return out


def matches(answer: Fraction, written_decimals: int, gold: Fraction) -> bool:
  """Is `answer` the gold value to the precision it was written with?

  Integral gold must match exactly. Otherwise the answer must equal gold
  rounded to max(written_decimals, 2) places (either rounding direction).
  """
  if gold.denominator == 1:
    return answer == gold
  places = max(written_decimals, 2)
  return abs(answer - gold) <= Fraction(1, 2 * 10**places)
