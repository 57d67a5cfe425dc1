"""Canonical compact JSON text and a strict decoder.

One way to print: no spaces, key order as given, non-ASCII kept. The decoder
rejects what a lenient one would silently accept (duplicate keys, NaN/Infinity),
because a model's action must mean exactly one thing.
"""
from __future__ import annotations

import json
from typing import Any


def dumps(obj: Any) -> str:
  return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def key(obj: Any) -> str:
  """Order-independent text of a value, for counting repeats."""
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _no_duplicates(pairs):
  out = {}
  for key, value in pairs:
    if key in out:
      raise ValueError(f"duplicate key '{key}'")
    out[key] = value
  return out


def _no_constant(name):
  raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def raw_decode(text: str) -> tuple[Any, int]:
  """(value, end index) of the JSON value at the start of `text`; ValueError if none."""
  return _DECODER.raw_decode(text)
