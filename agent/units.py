"""Unit tables for the `convert` tool: exact factors to one base unit per dimension.

Linear units store the size of one unit in the base unit. Temperature is affine
and converts through kelvin. Every factor is an exact Fraction (the inch, pound
and US gallon are defined exactly), so conversions only round when formatted.
"""
from __future__ import annotations

from fractions import Fraction as F

LINEAR = {
    "length": {"mm": F(1, 1000), "cm": F(1, 100), "m": F(1), "km": F(1000),
               "in": F("0.0254"), "ft": F("0.3048"), "yd": F("0.9144"),
               "mi": F("1609.344")},
    "mass": {"mg": F(1, 1000), "g": F(1), "kg": F(1000), "t": F(10**6),
             "oz": F("28.349523125"), "lb": F("453.59237")},
    "time": {"s": F(1), "min": F(60), "h": F(3600), "day": F(86400),
             "week": F(604800)},
    "volume": {"ml": F(1, 1000), "l": F(1), "cup": F("0.2365882365"),
               "gal": F("3.785411784")},
    "data": {"B": F(1), "KB": F(1000), "MB": F(10**6), "GB": F(10**9),
             "TB": F(10**12), "KiB": F(2**10), "MiB": F(2**20), "GiB": F(2**30)},
}
# Temperature unit -> (scale, offset) with kelvin = value * scale + offset.
TEMPERATURE = {"K": (F(1), F(0)), "C": (F(1), F("273.15")),
               "F": (F(5, 9), F("273.15") - F(32) * F(5, 9))}

# Surface words people write, mapped to the canonical symbol the tool reports.
ALIASES = {
    "millimeter": "mm", "millimeters": "mm", "centimeter": "cm", "centimeters": "cm",
    "meter": "m", "meters": "m", "metre": "m", "metres": "m",
    "kilometer": "km", "kilometers": "km", "inch": "in", "inches": "in",
    "foot": "ft", "feet": "ft", "yard": "yd", "yards": "yd", "mile": "mi", "miles": "mi",
    "gram": "g", "grams": "g", "kilogram": "kg", "kilograms": "kg", "ton": "t",
    "tons": "t", "ounce": "oz", "ounces": "oz", "pound": "lb", "pounds": "lb",
    "lbs": "lb", "second": "s", "seconds": "s", "sec": "s", "minute": "min",
    "minutes": "min", "hour": "h", "hours": "h", "hr": "h", "days": "day",
    "weeks": "week", "milliliter": "ml", "milliliters": "ml", "liter": "l",
    "liters": "l", "litre": "l", "litres": "l", "L": "l", "cups": "cup",
    "gallon": "gal", "gallons": "gal", "celsius": "C", "fahrenheit": "F",
    "kelvin": "K", "byte": "B", "bytes": "B",
}

DIMENSION = {u: dim for dim, table in LINEAR.items() for u in table}
DIMENSION.update({u: "temperature" for u in TEMPERATURE})


class UnitError(ValueError):
  pass


def canonical(unit: str) -> str:
  if unit in DIMENSION:
    return unit
  alias = ALIASES.get(unit, ALIASES.get(unit.lower()))
  if alias is None:
    raise UnitError(f"unknown unit '{unit}'")
  return alias


def convert(value: F, src: str, dst: str) -> F:
  """`value` in unit `src` expressed in unit `dst` (exact)."""
  a, b = canonical(src), canonical(dst)
  if DIMENSION[a] != DIMENSION[b]:
    raise UnitError(f"cannot convert {DIMENSION[a]} ({a}) to {DIMENSION[b]} ({b})")
  if DIMENSION[a] == "temperature":
    (sa, oa), (sb, ob) = TEMPERATURE[a], TEMPERATURE[b]
    kelvin = value * sa + oa
    return (kelvin - ob) / sb
  table = LINEAR[DIMENSION[a]]
  return value * table[a] / table[b]


def factor(src: str, dst: str) -> F:
  """How many `dst` in one `src` (linear units only)."""
  a, b = canonical(src), canonical(dst)
  if DIMENSION[a] == "temperature" or DIMENSION[a] != DIMENSION[b]:
    raise UnitError(f"no single factor from {a} to {b}")
  table = LINEAR[DIMENSION[a]]
  return table[a] / table[b]
