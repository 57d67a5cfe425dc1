"""Pre-norm decoder block and the layer stack (scanned or unrolled, with remat).

Param layout of a `DecoderStack` (the model names it `decoder`):
  scan_layers=True:   decoder/layers/<block params>, every leaf with a leading
                      [num_layers] axis whose logical name is "layers";
  scan_layers=False:  decoder/layers_0/<block params>, decoder/layers_1/..., ...
Block params: attention_norm/{scale[,bias]}, attention/{query,key,value,out}/kernel,
mlp_norm/{scale[,bias]}, mlp/{wi_gate,wi_up | wi, wo}/kernel.
`stack_layer_params` / `unstack_layer_params` convert between the two layouts.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from lm.attention import MultiHeadAttention, make_attention_mask
from lm.config import ModelConfig
from lm.layers import BLD, MLP, compute_dtype, make_norm

REMAT_POLICIES = ("none", "full", "dots_saveable", "save_attention_out")
ATTENTION_OUT = "attention_out"  # checkpoint_name of the attention output


def remat_policy(name: str):
  """jax.checkpoint policy for a cfg.remat_policy name (None for "none")."""
  if name == "none":
    return None
  if name == "full":
    return jax.checkpoint_policies.nothing_saveable
  if name == "dots_saveable":
    return jax.checkpoint_policies.dots_saveable
  if name == "save_attention_out":
    return jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT)
  raise ValueError(f"unknown remat policy {name!r}; valid: {', '.join(REMAT_POLICIES)}")


class DecoderBlock(nn.Module):
  """x + drop(attn(norm(x))), then x + drop(mlp(norm(x))); causal self-attention."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL, deterministic: bool):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout_rate)
    use_dropout = cfg.dropout_rate > 0 and not deterministic
    mask_B1LS = make_attention_mask(segment_ids_BL, segment_ids_BL, causal=True)

    h_BLD = make_norm(cfg, "attention_norm")(x_BLD)
    h_BLD = MultiHeadAttention(cfg, name="attention")(h_BLD, positions_BL, mask_B1LS)
    h_BLD = checkpoint_name(h_BLD, ATTENTION_OUT)
    if use_dropout:
      h_BLD = drop(h_BLD, deterministic=False)
    x_BLD = nn.with_logical_constraint(x_BLD + h_BLD, BLD)

    h_BLD = make_norm(cfg, "mlp_norm")(x_BLD)
    h_BLD = MLP(cfg, name="mlp")(h_BLD)
    if use_dropout:
      h_BLD = drop(h_BLD, deterministic=False)
    return nn.with_logical_constraint(x_BLD + h_BLD, BLD)


class _ScanBlock(DecoderBlock):
  """DecoderBlock in nn.scan's (carry, *xs) -> (carry, ys) form; same params."""

  def __call__(self, x_BLD, positions_BL, segment_ids_BL, deterministic: bool):
    return super().__call__(x_BLD, positions_BL, segment_ids_BL, deterministic), None


class DecoderStack(nn.Module):
  """cfg.num_layers DecoderBlocks; nn.scan over layers when cfg.scan_layers."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, positions_BL, segment_ids_BL, deterministic: bool):
    cfg = self.cfg
    x_BLD = x_BLD.astype(compute_dtype(cfg))  # the scan carry keeps one dtype
    block_cls = _ScanBlock if cfg.scan_layers else DecoderBlock
    policy = remat_policy(cfg.remat_policy)
    if cfg.remat_policy != "none":
      # Arg 4 (counting self) is `deterministic`, a Python bool.
      block_cls = nn.remat(block_cls, policy=policy, prevent_cse=not cfg.scan_layers,
                           static_argnums=(4,))
    if cfg.scan_layers:
      scanned = nn.scan(
          block_cls,
          variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
          length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})
      x_BLD, _ = scanned(cfg, name="layers")(x_BLD, positions_BL, segment_ids_BL, deterministic)
    else:
      for i in range(cfg.num_layers):
        x_BLD = block_cls(cfg, name=f"layers_{i}")(x_BLD, positions_BL, segment_ids_BL,
                                                   deterministic)
    return x_BLD


# ---------------------------------------------------------------- layout conversion
# Both helpers walk nested dicts (a whole `params` tree, a {"params": ...} variables
# dict, or any pytree whose dict nodes hold params, e.g. optimizer moments). Leaves may
# be arrays, jax.ShapeDtypeStruct (shardings are dropped) or boxed nn.Partitioned
# values (the "layers" name is added / removed).

_UNROLLED = re.compile(r"^layers_(\d+)$")


def _is_box(x) -> bool:
  return isinstance(x, nn.Partitioned)


def _map_dicts(tree: Any, fn) -> Any:
  if isinstance(tree, Mapping):
    return fn(tree)
  return jax.tree_util.tree_map(
      lambda t: fn(t) if isinstance(t, Mapping) else t, tree,
      is_leaf=lambda t: isinstance(t, Mapping))


def _take_layer(x, i: int, num_layers: int):
  if _is_box(x):
    names = x.names[1:] if x.names else x.names
    return x.replace(value=_take_layer(x.value, i, num_layers), names=names)
  if x.shape[0] != num_layers:
    raise ValueError(f"scanned leaf has leading dim {x.shape[0]}, expected num_layers={num_layers}")
  if isinstance(x, jax.ShapeDtypeStruct):  # abstract trees (e.g. restore targets)
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
  return x[i]


def _stack(xs):
  if _is_box(xs[0]):
    names = ("layers",) + tuple(xs[0].names) if xs[0].names else xs[0].names
    return xs[0].replace(value=_stack([x.value for x in xs]), names=names)
  if isinstance(xs[0], jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(xs),) + tuple(xs[0].shape), xs[0].dtype)
  if all(isinstance(x, np.ndarray) for x in xs):
    return np.stack(xs)
  return jnp.stack(xs)


def unstack_layer_params(scanned_params: Any, num_layers: int) -> Any:
  """Scanned -> unrolled: each `.../layers` subtree becomes `.../layers_0..layers_{n-1}`."""

  def convert(d: Mapping) -> dict:
    out = {}
    for key, value in d.items():
      if key == "layers" and isinstance(value, Mapping):
        for i in range(num_layers):
          out[f"layers_{i}"] = jax.tree_util.tree_map(
              lambda x, i=i: _take_layer(x, i, num_layers), value, is_leaf=_is_box)
      elif isinstance(value, Mapping):
        out[key] = convert(value)
      else:
        out[key] = value
    return out

  return _map_dicts(scanned_params, convert)


def stack_layer_params(unrolled_params: Any, num_layers: int) -> Any:
  """Unrolled -> scanned: `.../layers_0..layers_{n-1}` become one stacked `.../layers`."""

  def convert(d: Mapping) -> dict:
    found = sorted(int(m.group(1)) for m in map(_UNROLLED.match, d) if m)
    if found and found != list(range(num_layers)):
      raise ValueError(f"expected layers_0..layers_{num_layers - 1}, found "
                       f"{['layers_%d' % i for i in found]}")
    out = {}
    for key, value in d.items():
      if _UNROLLED.match(key):
        continue
      out[key] = convert(value) if isinstance(value, Mapping) else value
    if found:
      layers = [d[f"layers_{i}"] for i in range(num_layers)]
      out["layers"] = jax.tree_util.tree_map(lambda *xs: _stack(xs), *layers, is_leaf=_is_box)
    return out

  return _map_dicts(unrolled_params, convert)
