"""A launch plan: the exact commands or script (what --dry_run prints) and how to run them."""
from __future__ import annotations

import dataclasses
import os
import shlex
from typing import Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Plan:
  text: str  # shell commands / script, exactly what `run` executes
  run: Callable[[], int]  # returns an exit status


def env_prefix(env: dict[str, str]) -> str:
  """`K=V K2=V2` with shell quoting, in insertion order."""
  return " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())


def parse_env(pairs: list[str] | None) -> dict[str, str]:
  """['K=V', ...] -> {K: V}; a pair without '=' is an error naming it."""
  out = {}
  for p in pairs or []:
    if "=" not in p or not p.split("=", 1)[0]:
      raise ValueError(f"--env {p!r} must look like NAME=VALUE")
    k, v = p.split("=", 1)
    out[k] = v
  return out
