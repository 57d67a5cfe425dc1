"""Warm starts across models: load every param another checkpoint holds under a matching name.

`train.init_from` with `train.init_from_params="matching"` (the default "all" needs
the very same model). Each of this model's params is looked up in the source
checkpoint by its path in the stacked storage layout (lm/layout.py); a layer stack
may come from the source's stack of another name, in this order of preference:

  decoder stack <- "decoder", then "encoder"   (a BERT-style encoder warm-starts a GPT)
  encoder stack <- "encoder", then "decoder"

so an MLM-pretrained encoder initialises a decoder-only model for tuning, and a
decoder-only model initialises both stacks of an encoder-decoder. Params the
source lacks (heads, cross-attention) keep their fresh initialisation; a name that
matches with another shape is an error listing every such param, since a silent
skip would hide a config mistake (say, another vocab_size).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from lm import layout
from lm.checkpoint import Checkpointer
from lm.config import ConfigError

log = logging.getLogger(__name__)

STACK_SOURCES = {"decoder": ("decoder", "encoder"), "encoder": ("encoder", "decoder")}
MODES = ("all", "matching")

Path = tuple[str, ...]


def flatten(tree: Any) -> dict[Path, Any]:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[tuple(str(getattr(k, "key", k)) for k in path)] = leaf
  return out


def _unflatten(flat: dict[Path, Any]) -> dict:
  root: dict = {}
  for path, leaf in flat.items():
    node = root
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = leaf
  return root


def saved_param_shapes(ckpt_dir: str, step: int) -> dict[Path, tuple[int, ...]]:
  """Param path -> shape of a saved train state, from orbax metadata (no array is read)."""
  meta = ocp.StandardCheckpointer().metadata(os.path.join(ckpt_dir, str(step), "state"))
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, dict) or "params" not in tree:
    raise ConfigError(f"train.init_from: {ckpt_dir}/{step} holds no params that can be read.")
  return {p: tuple(x.shape) for p, x in flatten(tree["params"]).items()}


def _candidates(path: Path) -> list[Path]:
  names = STACK_SOURCES.get(path[0], (path[0],))
  return [(n,) + path[1:] for n in names]


def plan(target: dict[Path, tuple[int, ...]], saved: dict[Path, tuple[int, ...]]):
  """(target path -> source path, fresh target paths, [(path, shape here, source path, shape there)])."""
  loaded, fresh, mismatched = {}, [], []
  for path, shape in target.items():
    source = next((c for c in _candidates(path) if c in saved), None)
    if source is None:
      fresh.append(path)
    elif tuple(saved[source]) != tuple(shape):
      mismatched.append((path, tuple(shape), source, tuple(saved[source])))
    else:
      loaded[path] = source
  return loaded, fresh, mismatched


def _names(paths) -> str:
  return ", ".join("/".join(p) for p in paths)


def check_plan(ckpt_dir: str, step: int, target: dict[Path, tuple[int, ...]]) -> tuple[dict, list]:
  """The plan, or a ConfigError naming every shape mismatch (or that nothing matched)."""
  loaded, fresh, mismatched = plan(target, saved_param_shapes(ckpt_dir, step))
  where = f"train.init_from ({ckpt_dir}/{step})"
  if mismatched:
    lines = "\n".join(f"  {'/'.join(p)}: {s} here, {'/'.join(q)}: {t} in the checkpoint"
                      for p, s, q, t in mismatched)
    raise ConfigError(f"{where}: params with matching names but other shapes:\n{lines}\n"
                      "Make the model fields that set these shapes equal to the source run's.")
  if not loaded:
    raise ConfigError(f"{where}: no param of this model matches the checkpoint's names; "
                      "is it a checkpoint of a model of this kind?")
  return loaded, fresh


def load_matching(path: str, state, model_cfg, ckpt_dir: str, step: int):
  """`state` with every matching param replaced by the source's; returns (state, report)."""
  scan, n = model_cfg.scan_layers, model_cfg.num_layers
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state.params)
  target = flatten(layout.storage_abstract(abstract, scan, n))
  loaded, fresh = check_plan(ckpt_dir, step, {p: a.shape for p, a in target.items()})
  request = _unflatten({src: target[dst] for dst, src in loaded.items()})
  restored = flatten(Checkpointer(ckpt_dir).restore_params(step, request))
  current = flatten(layout.to_storage(state.params, scan, n))
  merged = {p: restored[loaded[p]] if p in loaded else current[p] for p in target}
  params = layout.place_like(layout.from_storage(_unflatten(merged), scan, n), state.params)
  report = {"loaded": len(loaded), "fresh": sorted("/".join(p) for p in fresh),
            "renamed": sorted(f"{'/'.join(s)} -> {'/'.join(d)}" for d, s in loaded.items() if d != s)}
  log.info("init_from %s: %d params loaded, fresh: %s", path, len(loaded), _names(fresh) or "none")
  return state.replace(params=jax.tree.map(lambda a, b: a.astype(b.dtype), params, state.params)), report
