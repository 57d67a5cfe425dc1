"""The WORKDIR contract: config.json (resolved config) and manifest.json (where and how it ran).

A WORKDIR belongs to one configuration. Starting a run there with a different
configuration is refused before anything is written, with the differing fields
listed; fields in `RESUMABLE_FIELDS` (how long, how often, which mesh) may change.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import subprocess
from typing import Any

import jax

from lm.config import RESUMABLE_FIELDS, ConfigError, config_diff, with_model_defaults

CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "grain",
            "sentencepiece", "numpy", "ml-collections")


def read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def check_existing_config(workdir: str, config: dict) -> dict[str, tuple[Any, Any]]:
  """Raise if WORKDIR holds a run of another configuration; return the allowed differences."""
  old = read_json(os.path.join(workdir, CONFIG_FILE))
  if old is None:
    return {}
  if isinstance(old.get("model"), dict):
    old = {**old, "model": with_model_defaults(old["model"])}
  diff = config_diff(old, config)
  blocking = {k: v for k, v in diff.items() if k not in RESUMABLE_FIELDS}
  if blocking:
    lines = "\n".join(f"  {k}: {a!r} in WORKDIR, {b!r} now" for k, (a, b) in blocking.items())
    raise ConfigError(
        f"WORKDIR {workdir} holds a run with a different configuration:\n{lines}\n"
        "Use a new --workdir for a new experiment, or pass the same config to resume this one. "
        "Nothing in the WORKDIR was changed.")
  return diff


def _git_sha() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    return out.stdout.strip() if out.returncode == 0 else "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _versions() -> dict[str, str]:
  out = {}
  for p in PACKAGES:
    try:
      out[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      out[p] = "not installed"
  return out


def write_run_files(workdir: str, config: dict, mesh: jax.sharding.Mesh) -> None:
  """config.json once; manifest.json records the first start and every restart."""
  os.makedirs(workdir, exist_ok=True)
  write_json_atomic(os.path.join(workdir, CONFIG_FILE), config)
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  start = {
      "time": now,
      "git_sha": _git_sha(),
      "process_count": jax.process_count(),
      "devices": [str(d) for d in jax.devices()],
      "device_kind": jax.devices()[0].device_kind,
      "platform": jax.devices()[0].platform,
      "mesh": dict(mesh.shape),
  }
  path = os.path.join(workdir, MANIFEST_FILE)
  manifest = read_json(path)
  if manifest is None:
    manifest = {"start_time": now, **start, "packages": _versions(), "restarts": []}
  else:
    manifest.setdefault("restarts", []).append(start)
  write_json_atomic(path, manifest)
