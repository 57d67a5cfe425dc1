"""A small JSON-schema validator for the subset the tool signatures use.

Supported: type (string, number, integer, boolean, object), enum, required,
properties, additionalProperties=false, minLength/maxLength, minimum/maximum.
`integer` means a JSON integer (no decimal point); booleans are never numbers.
Errors name the argument, so they can be fed back to the agent verbatim.
"""
from __future__ import annotations

from typing import Any

_TYPES = ("string", "number", "integer", "boolean", "object")
_KEYS = {"type", "description", "enum", "required", "properties",
         "additionalProperties", "minLength", "maxLength", "minimum", "maximum"}


def type_name(value: Any) -> str:
  """The JSON type of a decoded value, as an error message would say it."""
  if isinstance(value, bool):
    return "boolean"
  if isinstance(value, int):
    return "integer"
  if isinstance(value, float):
    return "number"
  if isinstance(value, str):
    return "string"
  if isinstance(value, dict):
    return "object"
  if isinstance(value, list):
    return "array"
  if value is None:
    return "null"
  return type(value).__name__


def _is_type(value: Any, t: str) -> bool:
  if t == "number":
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if t == "integer":
    return isinstance(value, int) and not isinstance(value, bool)
  return type_name(value) == t


def validate(schema: dict, value: Any, where: str = "arguments") -> str | None:
  """Returns None when `value` satisfies `schema`, else the first error."""
  t = schema.get("type")
  if t is not None and not _is_type(value, t):
    return f"{where} must be {t}, got {type_name(value)}"
  if "enum" in schema and value not in schema["enum"]:
    allowed = ", ".join(str(v) for v in schema["enum"])
    return f"{where} must be one of: {allowed}"
  if isinstance(value, str):
    if len(value) < schema.get("minLength", 0):
      return f"{where} must have at least {schema['minLength']} characters"
    if "maxLength" in schema and len(value) > schema["maxLength"]:
      return f"{where} must have at most {schema['maxLength']} characters"
  if _is_type(value, "number"):
    if "minimum" in schema and value < schema["minimum"]:
      return f"{where} must be >= {schema['minimum']}"
    if "maximum" in schema and value > schema["maximum"]:
      return f"{where} must be <= {schema['maximum']}"
  if isinstance(value, dict):
    props = schema.get("properties", {})
    for key in schema.get("required", ()):
      if key not in value:
        return f"missing argument '{key}'"
    if schema.get("additionalProperties", True) is False:
      for key in value:
        if key not in props:
          return f"unexpected argument '{key}'"
    for key, sub in props.items():
      if key in value:
        err = validate(sub, value[key], f"argument '{key}'")
        if err:
          return err
  return None


def check_schema(schema: dict, where: str = "schema") -> None:
  """Raises ValueError if `schema` uses anything `validate` would ignore."""
  unknown = set(schema) - _KEYS
  if unknown:
    raise ValueError(f"{where}: unsupported keys {sorted(unknown)}")
  if "type" in schema and schema["type"] not in _TYPES:
    raise ValueError(f"{where}: unsupported type {schema['type']!r}")
  for key in schema.get("required", ()):
    if key not in schema.get("properties", {}):
      raise ValueError(f"{where}: required '{key}' is not a property")
  for key, sub in schema.get("properties", {}).items():
    check_schema(sub, f"{where}.{key}")
