"""What every Hugging Face architecture shares: tensor specs, safetensors I/O, checks.

An architecture module (bert.py, gpt2.py, t5.py) states only the mapping:
  config_from_hf(hf_config, names) -> ModelConfig   (UnsupportedError names the field)
  config_to_hf(cfg, base) -> dict                   (UnsupportedError names the field)
  tensor_specs(cfg) -> {our unrolled param path: Spec}
  canonical(name) -> name                           (the head class's name of a base class's tensor)
  IGNORED                                           (regex: HF tensors that carry nothing: tied copies, buffers)
This module reads one tensor at a time, stacks layers into the checkpoint layout
(lm/layout.py), and checks names and shapes before anything is converted.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import numpy as np

from lm.config import ModelConfig

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_CONFIG = "config.json"


class InteropError(ValueError):
  """A checkpoint that cannot be converted; the message names what and why."""


class UnsupportedError(InteropError):
  """An architecture, config field or value this converter does not reproduce."""


@dataclasses.dataclass(frozen=True)
class Spec:
  """How one of our params is stored as (part of) one Hugging Face tensor.

  Our view is reshaped to HF's: a `kernel` to [in, out] (its first `in_dims` dims
  are the input), a `flat` tensor (attention biases [H, K]) to 1-D, `same` as is;
  `transpose` then gives torch Linear's [out, in] (GPT-2's Conv1D keeps [in, out]);
  `part` (i, n): ours is the i-th of n equal slices of HF's last axis (fused qkv).
  `optional`: absent from the file is allowed (a head the HF class lacks); zeros.
  """
  name: str
  view: str = "same"  # "same" | "kernel" | "flat"
  transpose: bool = False
  in_dims: int = 1
  part: tuple[int, int] = (0, 1)
  optional: bool = False


def linear(name: str, in_dims: int = 1, **kw) -> Spec:
  """A torch nn.Linear weight ([out, in])."""
  return Spec(name, "kernel", transpose=True, in_dims=in_dims, **kw)


def hf_shape(shape: tuple, spec: Spec) -> tuple:
  """The shape the HF tensor has for our param of `shape`."""
  if spec.view == "kernel":
    s = (math.prod(shape[:spec.in_dims]), math.prod(shape[spec.in_dims:]))
  elif spec.view == "flat":
    s = (math.prod(shape),)
  else:
    s = tuple(shape)
  if spec.transpose:
    s = s[::-1]
  i, n = spec.part
  return s[:-1] + (s[-1] * n,)


def to_ours(x: np.ndarray, spec: Spec, shape: tuple) -> np.ndarray:
  if spec.transpose:
    x = x.T
  i, n = spec.part
  if n > 1:
    x = np.split(x, n, axis=-1)[i]
  return np.ascontiguousarray(x).reshape(shape)


def to_hf(x: np.ndarray, spec: Spec) -> np.ndarray:
  """Our param -> its HF tensor (its slice of it when spec.part has n > 1)."""
  x = np.asarray(x)
  if spec.view == "kernel":
    x = x.reshape(math.prod(x.shape[:spec.in_dims]), -1)
  elif spec.view == "flat":
    x = x.reshape(-1)
  return np.ascontiguousarray(x.T if spec.transpose else x)


# ---------------------------------------------------------------- safetensors

class Reader:
  """The tensors of a HF directory (one file or a sharded index), read one at a time."""

  def __init__(self, hf_dir: str, canonical: Callable[[str], str] = lambda n: n):
    from safetensors import safe_open
    index = os.path.join(hf_dir, SAFETENSORS_INDEX)
    if os.path.exists(index):
      with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(hf_dir, SAFETENSORS)):
      files = [SAFETENSORS]
    else:
      raise InteropError(f"{hf_dir} has no {SAFETENSORS} (or {SAFETENSORS_INDEX}); convert "
                         "PyTorch .bin weights to safetensors first")
    self._handles = [safe_open(os.path.join(hf_dir, f), framework="numpy") for f in files]
    # canonical name (e.g. with the prefix a head class adds) -> (file handle, name in the file)
    self._where = {canonical(k): (h, k) for h in self._handles for k in h.keys()}

  def names(self) -> set[str]:
    return set(self._where)

  def shape(self, name: str) -> tuple:
    h, k = self._where[name]
    return tuple(h.get_slice(k).get_shape())

  def get(self, name: str) -> np.ndarray:
    h, k = self._where[name]
    return h.get_tensor(k)


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path,
            metadata={"format": "pt"})


# ---------------------------------------------------------------- param trees

def flat_paths(tree: Mapping, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from flat_paths(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def set_path(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def layer_paths(path: tuple, shape: tuple) -> list[tuple[tuple, tuple]]:
  """A stored (stacked) leaf -> [(unrolled path, shape)], one per layer; itself if not stacked."""
  if "layers" not in path:
    return [(path, tuple(shape))]
  j = path.index("layers")
  return [(path[:j] + (f"layers_{i}",) + path[j + 1:], tuple(shape[1:])) for i in range(shape[0])]


def storage_shapes(cfg: ModelConfig) -> dict[tuple, tuple]:
  """{stored path: shape} of cfg's params in the checkpoint (stacked) layout."""
  import dataclasses as dc

  from lm.decode import abstract_params
  abstract = abstract_params(dc.replace(cfg, scan_layers=True))
  return {p: tuple(a.shape) for p, a in flat_paths(abstract)}


def _fmt(shape) -> str:
  return "[" + ", ".join(map(str, shape)) + "]"


def check_tensors(specs: Mapping[tuple, Spec], shapes: Mapping[tuple, tuple], reader: Reader,
                  ignored: Callable[[str], bool]) -> list[str]:
  """Raise InteropError listing missing, mismatched and unexpected tensors; else return the
  names of optional tensors that are absent."""
  unrolled = {p: s for path, shape in shapes.items() for p, s in layer_paths(path, shape)}
  expected: dict[str, tuple] = {}
  for path, spec in specs.items():
    expected[spec.name] = hf_shape(unrolled[path], spec)  # every part gives the same full shape
  names = reader.names()
  missing = [n for n in sorted(expected) if n not in names
             and not all(s.optional for s in specs.values() if s.name == n)]
  absent = sorted(n for n in expected if n not in names and n not in missing)
  mismatched = [n for n in sorted(expected) if n in names and reader.shape(n) != expected[n]]
  unexpected = sorted(n for n in names if n not in expected and not ignored(n))
  lines = []
  if missing:
    lines.append("missing tensors (name, expected shape):")
    lines += [f"  {n} {_fmt(expected[n])}" for n in missing]
  if mismatched:
    lines.append("tensors of the wrong shape (name, in the file, expected):")
    lines += [f"  {n} {_fmt(reader.shape(n))} {_fmt(expected[n])}" for n in mismatched]
  if unexpected:
    lines.append("unexpected tensors, which this converter would drop (name, shape):")
    lines += [f"  {n} {_fmt(reader.shape(n))}" for n in unexpected]
  if lines:
    raise InteropError("the checkpoint does not match its config.json:\n" + "\n".join(lines))
  return absent


def read_params(specs: Mapping[tuple, Spec], shapes: Mapping[tuple, tuple], reader: Reader,
                dtype) -> dict:
  """Our params in the stacked checkpoint layout, built leaf by leaf from the file.

  Beyond the tree being built, one HF tensor (and one stacked leaf) is in memory at a time.
  """
  names = reader.names()
  out: dict = {}
  for path, shape in shapes.items():
    layers = []
    for p, s in layer_paths(path, shape):
      spec = specs[p]
      x = to_ours(reader.get(spec.name), spec, s) if spec.name in names else np.zeros(s)
      layers.append(x.astype(dtype, copy=False))
    set_path(out, path, np.stack(layers) if "layers" in path else layers[0])
  return out


def hf_tensors(specs: Mapping[tuple, Spec], stored: Mapping) -> dict[str, np.ndarray]:
  """Our stored params -> {HF name: tensor}; fused parts are concatenated."""
  parts: dict[str, dict[int, np.ndarray]] = {}
  for path, x in flat_paths(stored):
    x = np.asarray(x)
    for i, (p, _) in enumerate(layer_paths(path, x.shape)):
      spec = specs[p]
      parts.setdefault(spec.name, {})[spec.part[0]] = to_hf(x[i] if "layers" in path else x, spec)
  return {n: (p[0] if len(p) == 1 else np.concatenate([p[i] for i in sorted(p)], axis=-1))
          for n, p in parts.items()}


def check_specs_cover(specs: Mapping[tuple, Spec], shapes: Mapping[tuple, tuple]) -> None:
  """Every param has a spec and every spec a param (a converter bug otherwise)."""
  ours = {p for path, shape in shapes.items() for p, _ in layer_paths(path, shape)}
  if ours != set(specs):
    raise AssertionError(f"specs and params differ: only params {sorted(ours - set(specs))}, "
                         f"only specs {sorted(set(specs) - ours)}")


def require(cfg: ModelConfig, arch: str, **fields) -> None:
  """UnsupportedError naming each model field whose value `arch` cannot express."""
  wrong = {k: getattr(cfg, k) for k, v in fields.items() if getattr(cfg, k) != v}
  if wrong:
    lines = ", ".join(f"model.{k}={v!r} (needs {fields[k]!r})" for k, v in wrong.items())
    raise UnsupportedError(f"this model cannot be exported as {arch}: {lines}")


def require_mha(cfg: ModelConfig, arch: str, any_head_dim: bool = False) -> None:
  """Plain multi-head attention (no GQA); head_dim = d_model / num_heads unless any_head_dim."""
  if cfg.kv_heads != cfg.num_heads:
    require(cfg, arch, num_kv_heads=0)
  if not any_head_dim and cfg.head_dim not in (0, cfg.d_model // cfg.num_heads):
    require(cfg, arch, head_dim=0)


def prefixed(prefix: str, keep: tuple) -> Callable[[str], str]:
  """canonical(): names not starting with `keep` get `prefix` (a base class's file lacks a head
  class's prefix, e.g. BertModel's `bert.`)."""
  return lambda name: name if name.startswith(keep) else prefix + name


def hf_get(hf: Mapping, key: str, default=None, arch: str = ""):
  """A required-when-no-default HF config value."""
  if key in hf and hf[key] is not None:
    return hf[key]
  if default is None:
    raise InteropError(f"the {arch} config.json has no {key!r}")
  return default


def refuse(arch: str, field: str, value, supported: str) -> None:
  raise UnsupportedError(f"{arch} config field {field}={value!r} is not supported "
                         f"(supported: {supported})")
