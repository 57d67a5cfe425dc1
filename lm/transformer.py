"""Transformer blocks and the layer stack (scanned or unrolled, with remat).

One block serves every family: self-attention under a mask the model builds
(causal for decoders, bidirectional over non-padding tokens for encoders,
prefix-LM in between), optional cross-attention to encoder outputs (decoders of
encoder-decoder models), then the MLP. cfg.norm_placement chooses
pre-norm, x + f(norm(x)), or post-norm, norm(x + f(x)) (the original
Transformer and BERT).

Param layout of a `TransformerStack` (models name it `decoder` or `encoder`):
  scan_layers=True:   <stack>/layers/<block params>, every leaf with a leading
                      [num_layers] axis whose logical name is "layers";
  scan_layers=False:  <stack>/layers_0/<block params>, <stack>/layers_1/..., ...
  position="relative": <stack>/relpos_bias/embedding [buckets, H], shared by all layers.
Block params: attention_norm/{scale[,bias]}, attention/{query,key,value,out}/kernel,
[cross_attention_norm/..., cross_attention/{query,key,value,out}/kernel,]
mlp_norm/{scale[,bias]}, mlp/{wi_gate,wi_up | wi, wo}/kernel; each projection also
has a `bias` with cfg.use_bias. The norm names are the same in both placements
(post-norm: attention_norm is the norm after the attention residual).
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

from lm.attention import MultiHeadAttention, RelativePositionBias
from lm.attention import sinusoidal_embedding
from lm.config import ModelConfig
from lm.layers import BLD, MLP, Embed, compute_dtype, make_norm

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



# scan_unroll=0 (auto) puts the whole stack in one scan iteration up to this depth.
AUTO_UNROLL_MAX_LAYERS = 8


def scan_unroll_for(scan_unroll: int, num_layers: int) -> int:
  """Layers per scan iteration for cfg.scan_unroll (0 = auto).

  Auto takes the whole stack when it has at most AUTO_UNROLL_MAX_LAYERS layers: XLA
  then fuses across layers, so the scanned model runs as fast as an unrolled one
  (ref_tiny, ref_small: 5-8% faster than one layer per iteration; BENCHMARKS.md), for
  3 s or so of compile time. Deeper stacks take one layer per iteration, which keeps
  compile time flat in depth.
  """
  if scan_unroll == 0:
    return num_layers if num_layers <= AUTO_UNROLL_MAX_LAYERS else 1
  return min(scan_unroll, num_layers)


class Block(nn.Module):
  """Self-attention [+ cross-attention] + MLP, each a residual sub-layer.

  Masks and the relative position bias come from the stack: they are the same
  for every layer, so they are built once outside the layer scan.
  """
  cfg: ModelConfig
  cross_attention: bool = False
  causal: bool = False  # the self-attention mask is causal (TransformerStack.causal)

  def _sublayer(self, x_BLD, norm_name: str, fn, drop, use_dropout: bool):
    pre = self.cfg.norm_placement == "pre"
    h_BLD = fn(make_norm(self.cfg, norm_name)(x_BLD) if pre else x_BLD)
    if use_dropout:
      h_BLD = drop(h_BLD, deterministic=False)
    x_BLD = x_BLD + h_BLD
    if not pre:
      x_BLD = make_norm(self.cfg, norm_name)(x_BLD)
    return nn.with_logical_constraint(x_BLD, BLD)

  @nn.compact
  def __call__(self, x_BLD, positions_BL, mask_B1LS, bias_BHLS, encoded_BSD, cross_mask_B1LS,
               deterministic: bool, cache_kv=None, cache_index=None):
    """Returns x, or (x, new (k, v)) when decoding with a KV cache (`cache_kv`)."""
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout_rate)
    use_dropout = cfg.dropout_rate > 0 and not deterministic
    new_kv = []

    def self_attention(h_BLD):
      h_BLD = MultiHeadAttention(cfg, causal=self.causal, name="attention")(h_BLD, positions_BL, mask_B1LS,
                                                        bias_BHLS=bias_BHLS, cache_kv=cache_kv,
                                                        cache_index=cache_index)
      if cache_kv is not None:
        h_BLD, kv = h_BLD
        new_kv.append(kv)
      return checkpoint_name(h_BLD, ATTENTION_OUT)

    x_BLD = self._sublayer(x_BLD, "attention_norm", self_attention, drop, use_dropout)
    if self.cross_attention:
      cross = MultiHeadAttention(cfg, rope=False, name="cross_attention")
      x_BLD = self._sublayer(x_BLD, "cross_attention_norm",
                             lambda h: cross(h, positions_BL, cross_mask_B1LS, kv_BSD=encoded_BSD),
                             drop, use_dropout)
    x_BLD = self._sublayer(x_BLD, "mlp_norm", MLP(cfg, name="mlp"), drop, use_dropout)
    return x_BLD if cache_kv is None else (x_BLD, new_kv[0])


class _ScanBlock(Block):
  """Block in nn.scan's (carry, *xs) -> (carry, ys) form; same params (ys: the new KV cache)."""

  def __call__(self, x_BLD, *args):
    out = super().__call__(x_BLD, *args)
    return out if isinstance(out, tuple) else (out, None)


class TransformerStack(nn.Module):
  """num_layers Blocks (cfg.num_layers when 0); nn.scan over layers when cfg.scan_layers.

  `bidirectional_bias` picks T5's relative-position buckets (position="relative"):
  both directions (encoders, prefix-LM decoders) or past-only (causal decoders).
  `causal` promises that the self-attention mask hides every key after its query
  (token index against token index) whenever no KV cache is passed, which lets
  attention skip those key blocks (lm/blocked_attention.py); prefix-LM masks do not.
  """
  cfg: ModelConfig
  num_layers: int = 0
  cross_attention: bool = False
  bidirectional_bias: bool = True
  causal: bool = False

  @nn.compact
  def __call__(self, x_BLD, positions_BL, mask_B1LS, encoded_BSD=None, cross_mask_B1LS=None,
               deterministic: bool = True, cache_kv=None, cache_index=None,
               kv_positions_BS=None):
    """x [B, L, D] -> x; decoding with `cache_kv` = (k, v) [layers, B, T, G, K] (the slot
    of the first new token `cache_index`, the positions of all T slots `kv_positions_BS`)
    returns (x, new (k, v))."""
    cfg = self.cfg
    num_layers = self.num_layers or cfg.num_layers
    x_BLD = x_BLD.astype(compute_dtype(cfg))  # the scan carry keeps one dtype
    bias_BHLS = None
    if cfg.position == "relative":
      bias_BHLS = RelativePositionBias(cfg, self.bidirectional_bias, name="relpos_bias")(
          positions_BL, positions_BL if kv_positions_BS is None else kv_positions_BS)
    if cache_kv is not None:
      return self._cached(x_BLD, num_layers, positions_BL, mask_B1LS, bias_BHLS, encoded_BSD,
                          cross_mask_B1LS, cache_kv, cache_index)
    block_cls = _ScanBlock if cfg.scan_layers else Block
    if cfg.remat_policy != "none":
      # Arg 7 (counting self) is `deterministic`, a Python bool.
      block_cls = nn.remat(block_cls, policy=remat_policy(cfg.remat_policy),
                           prevent_cse=not cfg.scan_layers, static_argnums=(7,))
    args = (positions_BL, mask_B1LS, bias_BHLS, encoded_BSD, cross_mask_B1LS, deterministic)
    if cfg.scan_layers:
      scanned = nn.scan(
          block_cls,
          variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast,) * len(args),
          length=num_layers,
          unroll=scan_unroll_for(cfg.scan_unroll, num_layers),
          metadata_params={nn.PARTITION_NAME: "layers"})
      x_BLD, _ = scanned(cfg, self.cross_attention, self.causal, name="layers")(x_BLD, *args)
    else:
      for i in range(num_layers):
        x_BLD = block_cls(cfg, self.cross_attention, self.causal, name=f"layers_{i}")(x_BLD, *args)
    return x_BLD


  def _cached(self, x_BLD, num_layers, positions_BL, mask_B1LS, bias_BHLS, encoded_BSD,
              cross_mask_B1LS, cache_kv, cache_index):
    # Same submodule names as __call__, so the same params; no remat (inference).
    cfg = self.cfg
    args = (positions_BL, mask_B1LS, bias_BHLS, encoded_BSD, cross_mask_B1LS, True)
    if cfg.scan_layers:
      scanned = nn.scan(
          _ScanBlock,
          variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast,) * len(args) + (0, nn.broadcast),
          length=num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})
      return scanned(cfg, self.cross_attention, name="layers")(x_BLD, *args, cache_kv, cache_index)
    ks, vs = [], []
    for i in range(num_layers):
      x_BLD, (k, v) = Block(cfg, self.cross_attention, name=f"layers_{i}")(
          x_BLD, *args, (cache_kv[0][i], cache_kv[1][i]), cache_index)
      ks.append(k)
      vs.append(v)
    return x_BLD, (jnp.stack(ks), jnp.stack(vs))


def embed_tokens(cfg: ModelConfig, embed: Embed, tokens_BL, positions_BL, pos_embed_name="pos_embed"):
  """Token embedding plus absolute positions (position="learned" | "sinusoidal").

  Call inside a compact model: the learned table becomes the caller's
  `pos_embed` submodule. RoPE and the relative bias act inside attention instead.
  """
  x_BLD = embed(tokens_BL)
  l = tokens_BL.shape[1]
  if cfg.position == "learned":
    if l > cfg.max_len:
      raise ValueError(f"sequence length {l} exceeds model.max_len={cfg.max_len} "
                       "(the learned position table); raise model.max_len")
    x_BLD = x_BLD + Embed(cfg, cfg.max_len, ("pos", "embed"), name=pos_embed_name)(positions_BL)
  elif cfg.position == "sinusoidal":
    x_BLD = x_BLD + sinusoidal_embedding(positions_BL, cfg.d_model).astype(x_BLD.dtype)
  return nn.with_logical_constraint(x_BLD, BLD)


def default_positions(tokens_BL, positions_BL=None, segment_ids_BL=None):
  """0..L-1 positions and one segment (no padding) when the caller passes none."""
  b, l = tokens_BL.shape
  if positions_BL is None:
    positions_BL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
  if segment_ids_BL is None:
    segment_ids_BL = jnp.ones((b, l), jnp.int32)
  return positions_BL, segment_ids_BL


# ---------------------------------------------------------------- layout conversion
# Both helpers walk nested dicts (a whole `params` tree, a {"params": ...} variables
# dict, or any pytree whose dict nodes hold params, e.g. optimizer moments). Leaves may
# be arrays, jax.ShapeDtypeStruct (shardings are dropped) or boxed nn.Partitioned
# values (the "layers" name is added / removed). Each stack is converted with its own
# depth, read from the tree (an encoder-decoder's decoder may differ from num_layers).

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


def _depth(stacked: Mapping) -> int:
  leaf = jax.tree_util.tree_leaves(stacked, is_leaf=_is_box)[0]
  return (leaf.value if _is_box(leaf) else leaf).shape[0]


def unstack_layer_params(scanned_params: Any, num_layers: int) -> Any:
  """Scanned -> unrolled: each `.../layers` subtree becomes `.../layers_0..layers_{n-1}`.

  n is each subtree's leading dim (`num_layers` for a model's main stack).
  """
  del num_layers  # every stack's depth is read from its leaves

  def convert(d: Mapping) -> dict:
    out = {}
    for key, value in d.items():
      if key == "layers" and isinstance(value, Mapping):
        n = _depth(value)
        for i in range(n):
          out[f"layers_{i}"] = jax.tree_util.tree_map(
              lambda x, i=i: _take_layer(x, i, n), value, is_leaf=_is_box)
      elif isinstance(value, Mapping):
        out[key] = convert(value)
      else:
        out[key] = value
    return out

  return _map_dicts(scanned_params, convert)


def stack_layer_params(unrolled_params: Any, num_layers: int) -> Any:
  """Unrolled -> scanned: `.../layers_0..layers_{n-1}` become one stacked `.../layers`.

  n is how many each stack has (`num_layers` for a model's main stack); they must be
  numbered 0..n-1.
  """
  del num_layers  # every stack's depth is read from its keys

  def convert(d: Mapping) -> dict:
    found = sorted(int(m.group(1)) for m in map(_UNROLLED.match, d) if m)
    if found and found != list(range(len(found))):
      raise ValueError(f"expected layers_0..layers_{len(found) - 1}, found "
                       f"{['layers_%d' % i for i in found]}")
    num_layers = len(found)
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
