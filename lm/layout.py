"""One checkpoint layout whatever `scan_layers` is.

Checkpoints always hold the stacked layout (`.../layers` with a leading layer
axis), the same tree a scanned model uses. An unrolled model (`layers_0`,
`layers_1`, ...) is stacked before saving and unstacked after restoring, so a
checkpoint written with scan_layers on restores with it off and vice versa.
Conversion applies to every param-shaped subtree of the train state (params,
Adam moments).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from lm.transformer import stack_layer_params, unstack_layer_params

_UNROLLED = re.compile(r"^layers_(\d+)$")


def _map_mappings(tree: Any, fn) -> Any:
  if isinstance(tree, Mapping):
    return fn(tree)
  return jax.tree_util.tree_map(lambda t: fn(t) if isinstance(t, Mapping) else t, tree,
                                is_leaf=lambda t: isinstance(t, Mapping))


def to_storage(state: Any, scan_layers: bool, num_layers: int) -> Any:
  """In-memory state -> the stacked layout written to disk."""
  return state if scan_layers else stack_layer_params(state, num_layers)


def from_storage(state: Any, scan_layers: bool, num_layers: int) -> Any:
  return state if scan_layers else unstack_layer_params(state, num_layers)


def _stacked_leaf(leaves: list) -> jax.ShapeDtypeStruct:
  x = leaves[0]
  sharding = getattr(x, "sharding", None)
  if isinstance(sharding, NamedSharding):
    spec = tuple(sharding.spec) + (None,) * (len(x.shape) - len(sharding.spec))
    sharding = NamedSharding(sharding.mesh, P(None, *spec))
  return jax.ShapeDtypeStruct((len(leaves),) + tuple(x.shape), x.dtype, sharding=sharding)


def storage_abstract(abstract_state: Any, scan_layers: bool, num_layers: int) -> Any:
  """The restore target in the stacked layout, keeping each leaf's sharding."""
  if scan_layers:
    return abstract_state

  def convert(d: Mapping) -> dict:
    found = sorted(int(m.group(1)) for m in map(_UNROLLED.match, d) if m)
    out = {k: (convert(v) if isinstance(v, Mapping) else v) for k, v in d.items() if not _UNROLLED.match(k)}
    if found:  # each stack has its own depth (an encoder-decoder's decoder may differ)
      layers = [d[f"layers_{i}"] for i in found]
      out["layers"] = jax.tree_util.tree_map(lambda *xs: _stacked_leaf(list(xs)), *layers)
    return out

  return _map_mappings(abstract_state, convert)


def place_like(tree: Any, target: Any) -> Any:
  """Move every leaf onto the sharding of the matching target leaf."""
  return jax.tree.map(lambda x, t: jax.device_put(x, t.sharding) if hasattr(t, "sharding") else x, tree, target)
