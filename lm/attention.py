"""Attention: masks, positional encodings (RoPE, sinusoidal, T5 relative bias), the
pure attention function and the multi-head (GQA/MQA) self/cross-attention module.

Shape suffixes: B batch, L query length, S key/value length, H query heads,
G key/value heads (H = G * R, R query heads per kv head), K head dim, D d_model.

Logical names of the module:
  params:      query kernel ("embed","heads","kv"); key/value kernels
               ("embed","kv_heads","kv"); out kernel ("heads","kv","embed").
  activations: q and the attention output ("batch","length","act_heads","kv");
               k and v ("batch","length","act_kv_heads","kv") (G may be smaller
               than H, so kv heads get their own rule); module output
               ("batch","length","act_embed").
  with cfg.use_bias: query/key/value bias ("heads"|"kv_heads","kv"), out bias ("embed",).
The relative position bias table (RelativePositionBias) is ("relpos_buckets", "heads").
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm import cpu_attention
from lm.blocked_attention import blocked_attention, blocked_self_attention
from lm.config import ModelConfig
from lm.layers import (BLD, Einsum, compute_dtype, fan_in_init, out_proj_scale, param_dtype,
                       token_einsum)
from lm.rope import apply_rope, rope_frequencies, rope_tables, rotate  # noqa: F401 (re-exported)

BLHK = ("batch", "length", "act_heads", "kv")
BSGK = ("batch", "length", "act_kv_heads", "kv")


# ---------------------------------------------------------------- masks
# Each piece is a bool [B, L, S] (True = may attend); make_attention_mask ANDs
# them. A prefix-LM mask is `causal | (query and key both in the prefix)` in
# place of `causal`; an encoder mask simply drops `causal`.

def causal_mask(q_index_BL: jax.Array, kv_index_BS: jax.Array) -> jax.Array:
  """Query i may see key j iff j <= i."""
  return q_index_BL[:, :, None] >= kv_index_BS[:, None, :]


def segment_mask(q_segment_ids_BL: jax.Array, kv_segment_ids_BS: jax.Array) -> jax.Array:
  """Same document only; segment id 0 (padding) never attends and is never attended."""
  same = q_segment_ids_BL[:, :, None] == kv_segment_ids_BS[:, None, :]
  return same & (q_segment_ids_BL[:, :, None] != 0) & (kv_segment_ids_BS[:, None, :] != 0)


def make_attention_mask(q_segment_ids_BL: jax.Array, kv_segment_ids_BS: jax.Array,
                        causal: bool, q_positions: Optional[jax.Array] = None,
                        kv_positions: Optional[jax.Array] = None,
                        prefix_BL: Optional[jax.Array] = None) -> jax.Array:
  """Bool mask [B, 1, L, S] combining padding, packing (segment ids) and causality.

  Causality compares token indices: `q_positions` / `kv_positions` ([B, L] / [B, S])
  default to 0..L-1 / 0..S-1; pass them when the query block does not start at
  key index 0 (e.g. decoding against a KV cache). Per-document positions that
  restart at 0 also work, since tokens of other documents are masked anyway.

  `prefix_BL` (self-attention only, bool or 0/1) marks prefix-LM inputs: tokens of
  a prefix also see each other (bidirectionally); the rest stays causal.
  """
  b, l = q_segment_ids_BL.shape
  s = kv_segment_ids_BS.shape[1]
  mask_BLS = segment_mask(q_segment_ids_BL, kv_segment_ids_BS)
  if causal:
    if q_positions is None:
      q_positions = jnp.broadcast_to(jnp.arange(l), (b, l))
    if kv_positions is None:
      kv_positions = jnp.broadcast_to(jnp.arange(s), (b, s))
    visible_BLS = causal_mask(q_positions, kv_positions)
    if prefix_BL is not None:
      prefix_BL = prefix_BL.astype(bool)
      visible_BLS = visible_BLS | (prefix_BL[:, :, None] & prefix_BL[:, None, :])
    mask_BLS = mask_BLS & visible_BLS
  return mask_BLS[:, None, :, :]


# ---------------------------------------------------------------- attention

def dot_product_attention(q_BLHK: jax.Array, k_BSGK: jax.Array, v_BSGK: jax.Array,
                          mask_B1LS: Optional[jax.Array] = None,
                          bias_BHLS: Optional[jax.Array] = None, scale: bool = True) -> jax.Array:
  """softmax(q k^T / sqrt(K) + bias) v with grouped kv heads; returns [B, L, H, K].

  scale=False drops the 1/sqrt(K) (T5, which folds it into the query init).

  `bias_BHLS` (leading dim B or 1) is added to the scaled logits, e.g. T5's
  relative position bias.

  Query head h uses kv head h // R (R = H / G): the grouping is a reshape of q,
  k/v are never repeated. Logits and softmax are float32 whatever the input
  dtype. A query row with no visible key (padding) returns zeros, not NaN.

  The mask enters as an additive [B, 1, L, S] bias and fully masked rows are
  zeroed on the [B, L, H, K] output: both are cheaper on CPU than selecting on
  the [B, H, L, S] logits and probabilities (BENCHMARKS.md). Plain multi-head
  attention (R = 1) contracts 4-d operands; XLA:CPU transposes the grouped 5-d
  form around every matmul.
  """
  b, l, h, k = q_BLHK.shape
  g = k_BSGK.shape[2]
  if h % g:
    raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({g})")
  r = h // g
  logits_BHLS = (jnp.einsum("blhk,bshk->bhls", q_BLHK, k_BSGK, preferred_element_type=jnp.float32)
                 if r == 1 else
                 jnp.einsum("blgrk,bsgk->bgrls", q_BLHK.reshape(b, l, g, r, k), k_BSGK,
                            preferred_element_type=jnp.float32).reshape(b, h, l, -1))
  if scale:
    logits_BHLS = logits_BHLS * (1.0 / jnp.sqrt(jnp.float32(k)))
  if bias_BHLS is not None:
    logits_BHLS = logits_BHLS + bias_BHLS.astype(jnp.float32)
  if mask_B1LS is not None:
    # A finite fill (not -inf) keeps fully masked rows NaN-free; they are zeroed below.
    logits_BHLS = logits_BHLS + jnp.where(mask_B1LS, 0.0, jnp.finfo(jnp.float32).min)
  probs_BHLS = jax.nn.softmax(logits_BHLS, axis=-1).astype(v_BSGK.dtype)
  if r == 1:
    out_BLHK = jnp.einsum("bhls,bshk->blhk", probs_BHLS, v_BSGK)
  else:
    out_BLHK = jnp.einsum("bgrls,bsgk->blgrk", probs_BHLS.reshape(b, g, r, l, -1),
                          v_BSGK).reshape(b, l, h, k)
  if mask_B1LS is not None:
    visible_BL11 = jnp.any(mask_B1LS[:, 0], axis=-1)[:, :, None, None]
    out_BLHK = out_BLHK * visible_BL11.astype(out_BLHK.dtype)
  return out_BLHK.astype(q_BLHK.dtype)


ATTENTION_IMPLS = ("auto", "xla", "cudnn", "blocked", "cpu_fused")


def library_attention(q_BLHK: jax.Array, k_BSGK: jax.Array, v_BSGK: jax.Array,
                      mask_B1LS: Optional[jax.Array], bias_BHLS: Optional[jax.Array],
                      scale: bool, implementation: str) -> jax.Array:
  """`jax.nn.dot_product_attention` (implementation "cudnn": the fused flash kernel on
  NVIDIA GPUs; "xla" runs anywhere) with this module's conventions: the same
  mask and bias, GQA, scale=False, and zeros for query rows that see no key."""
  out_BLHK = jax.nn.dot_product_attention(
      q_BLHK, k_BSGK, v_BSGK, bias=bias_BHLS, mask=mask_B1LS,
      scale=None if scale else 1.0, implementation=implementation)
  if mask_B1LS is not None:
    visible_BL11 = jnp.any(mask_B1LS[:, 0], axis=-1)[:, :, None, None]
    out_BLHK = out_BLHK * visible_BL11.astype(out_BLHK.dtype)
  return out_BLHK.astype(q_BLHK.dtype)


def attention_backend(impl: str, dtype) -> str:
  """The attention path of cfg.attention_impl on this backend: "xla" (dot_product_attention
  above), "cudnn", "blocked" (lm/blocked_attention.py) or "cpu_fused" (lm/cpu_attention.py).
  "auto" takes cuDNN on GPUs for 16-bit compute, where its flash kernel applies, on CPUs
  the fused kernel where it compiles, else "blocked" (both measured faster there,
  BENCHMARKS.md), and the XLA path on TPUs and for float32 on GPUs."""
  if impl != "auto":
    return impl
  backend = jax.default_backend()
  if backend == "cpu":
    return "cpu_fused" if cpu_attention.unavailable_reason() is None else "blocked"
  return "cudnn" if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"


# ---------------------------------------------------------------- positions

def sinusoidal_embedding(positions_BL: jax.Array, d_model: int,
                         max_timescale: float = 10000.0) -> jax.Array:
  """Fixed encoding [B, L, D] = [sin(p * w_i) | cos(p * w_i)], w_i = max_timescale^(-2i/D)."""
  if d_model % 2:
    raise ValueError(f"sinusoidal positions need an even d_model, got {d_model}")
  angles_BLF = positions_BL.astype(jnp.float32)[..., None] * rope_frequencies(d_model, max_timescale)
  return jnp.concatenate([jnp.sin(angles_BLF), jnp.cos(angles_BLF)], axis=-1)


def sinusoidal_table(length: int, d_model: int, max_timescale: float = 10000.0) -> jax.Array:
  """The [length, D] table of `sinusoidal_embedding` for positions 0..length-1."""
  return sinusoidal_embedding(jnp.arange(length)[None], d_model, max_timescale)[0]


def relative_position_bucket(relative_BLS: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """T5's bucket of each (key position - query position), int32.

  Half the buckets (per direction when bidirectional) are exact distances
  0, 1, ...; the rest cover distances up to `max_distance` in log-spaced steps,
  and everything farther shares the last bucket. Unidirectional (causal) buckets
  map every key after the query to bucket 0.
  """
  if bidirectional:
    num_buckets //= 2
    offset = jnp.where(relative_BLS > 0, num_buckets, 0)
    distance = jnp.abs(relative_BLS)
  else:
    offset = 0
    distance = jnp.maximum(-relative_BLS, 0)
  exact = num_buckets // 2
  # log-spaced buckets for distance >= exact; max() keeps log() finite where unused
  far = jnp.log(jnp.maximum(distance, exact).astype(jnp.float32) / exact)
  far = far / math.log(max_distance / exact) * (num_buckets - exact)
  far_bucket = jnp.minimum(exact + far.astype(jnp.int32), num_buckets - 1)
  return (offset + jnp.where(distance < exact, distance, far_bucket)).astype(jnp.int32)


class RelativePositionBias(nn.Module):
  """Learned per-head bias of T5: table [buckets, H] indexed by the relative bucket.

  Computed once per stack and shared by its layers (as in T5). Returns a float32
  bias [B, H, L, S] from per-token positions, so packed documents restarting at
  0 get the same bias as alone.
  """
  cfg: ModelConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions_BL: jax.Array, kv_positions_BS: jax.Array) -> jax.Array:
    cfg = self.cfg
    n = cfg.relative_attention_num_buckets
    table_NH = self.param(
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(0.1),
                                                  ("relpos_buckets", "heads")),
        (n, cfg.num_heads), param_dtype(cfg))
    relative_BLS = kv_positions_BS[:, None, :] - q_positions_BL[:, :, None]
    bucket_BLS = relative_position_bucket(relative_BLS, self.bidirectional, n,
                                          cfg.relative_attention_max_distance)
    bias_BLSH = jnp.take(table_NH.astype(jnp.float32), bucket_BLS, axis=0)
    return jnp.transpose(bias_BLSH, (0, 3, 1, 2))


# ---------------------------------------------------------------- module

def _fused_projection(x_BLD: jax.Array, projections, cfg: ModelConfig) -> jax.Array:
  """[B, L, H + 2G, K]: the query, key and value projections as one matmul, their
  kernels concatenated along the head axis for the call (the params stay separate).
  One [D, (H + 2G) K] GEMM runs nearer the CPU's peak than three narrow ones, and the
  input gradient is one GEMM instead of three and their sum."""
  dtype = compute_dtype(cfg)
  kernel = jnp.concatenate([p.kernel.astype(dtype) for p in projections], axis=1)
  qkv_BLNK = token_einsum("bld,dnk->blnk", x_BLD.astype(dtype), kernel, cfg.weight_grad_impl,
                          matmul_library=cfg.matmul_library)
  if projections[0].bias is not None:
    qkv_BLNK = qkv_BLNK + jnp.concatenate([p.bias.astype(dtype) for p in projections], axis=0)
  return qkv_BLNK


class MultiHeadAttention(nn.Module):
  """Attention with cfg.num_heads query heads and cfg.kv_heads kv heads (GQA/MQA).

  Self-attention by default; cross-attention when `kv_BSD` (e.g. encoder outputs)
  is given. Decoding passes `cache_kv` = (k [B, T, G, K], v [B, T, G, K]) and the
  slot `cache_index` of the first new token: the new keys/values are written
  there, the queries attend over all T slots (`mask_B1LS` is [B, 1, L, T]) and
  the call returns (y, (k, v)). Without a cache nothing changes (training).
  Params: query/key/value/out, each `{name}/kernel` (+ `{name}/bias`
  with cfg.use_bias). RoPE is applied to q and k when cfg.position == "rope" and
  `rope` is set (cross-attention has no shared position axis, so it sets rope=False).
  """
  cfg: ModelConfig
  rope: bool = True
  causal: bool = False  # self-attention under a causal mask (TransformerStack.causal)

  @nn.compact
  def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array,
               mask_B1LS: Optional[jax.Array], kv_BSD: Optional[jax.Array] = None,
               bias_BHLS: Optional[jax.Array] = None, cache_kv=None,
               cache_index: Optional[jax.Array] = None):
    cfg = self.cfg
    if kv_BSD is None:
      kv_BSD = x_BLD
    d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.resolved_head_dim
    in_init = fan_in_init(1.0, in_axis=0, out_axis=(1, 2))
    query = Einsum((d, h, k), ("embed", "heads", "kv"), "bld,dhk->blhk", in_init, cfg,
                   bias_dims=2, name="query")
    key = Einsum((d, g, k), ("embed", "kv_heads", "kv"), "bsd,dgk->bsgk", in_init, cfg,
                 bias_dims=2, name="key")
    value = Einsum((d, g, k), ("embed", "kv_heads", "kv"), "bsd,dgk->bsgk", in_init, cfg,
                   bias_dims=2, name="value")
    backend = attention_backend(cfg.attention_impl, compute_dtype(cfg))
    if backend in ("blocked", "cpu_fused") and (bias_BHLS is not None or cache_kv is not None):
      # Neither has a learned bias (T5); with a cache they would copy the whole cache
      # to another layout for every new token.
      backend = "xla"
    rope = None
    if cfg.position == "rope" and self.rope:
      rope = rope_tables(positions_BL, k, cfg.rope_base)

    if backend in ("blocked", "cpu_fused") and kv_BSD is x_BLD:
      qkv_BLNK = _fused_projection(x_BLD, (query, key, value), cfg)
      if backend == "cpu_fused" and cpu_attention.supported(qkv_BLNK, cache=False, bias=False):
        out_BLHK = cpu_attention.fused_self_attention(
            qkv_BLNK, h, g, mask_B1LS, cfg.scale_attention, causal=self.causal, rope=rope)
      else:  # the kernel's scope (float32, lengths of 16s) or "blocked" chosen
        out_BLHK = blocked_self_attention(
            qkv_BLNK, h, g, mask_B1LS, cfg.scale_attention, causal=self.causal,
            block=cfg.attention_block_size, rope=rope)
      return self._out(out_BLHK.astype(compute_dtype(cfg)))

    q_BLHK, k_BSGK, v_BSGK = query(x_BLD), key(kv_BSD), value(kv_BSD)
    if backend == "cpu_fused":  # cross-attention: the kernel does self-attention only
      backend = "blocked"
    if rope is not None and backend != "blocked":  # the blocked path rotates in its copies
      q_BLHK = rotate(q_BLHK, *rope)
      k_BSGK = rotate(k_BSGK, *rope)
    q_BLHK = nn.with_logical_constraint(q_BLHK, BLHK)
    k_BSGK = nn.with_logical_constraint(k_BSGK, BSGK)
    v_BSGK = nn.with_logical_constraint(v_BSGK, BSGK)
    if cache_kv is not None:
      start = (0, cache_index, 0, 0)
      k_BSGK = jax.lax.dynamic_update_slice(cache_kv[0], k_BSGK.astype(cache_kv[0].dtype), start)
      v_BSGK = jax.lax.dynamic_update_slice(cache_kv[1], v_BSGK.astype(cache_kv[1].dtype), start)
      k_BSGK = nn.with_logical_constraint(k_BSGK, BSGK)
      v_BSGK = nn.with_logical_constraint(v_BSGK, BSGK)

    if backend == "cudnn":
      out_BLHK = library_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, bias_BHLS,
                                   cfg.scale_attention, "cudnn")
    elif backend == "blocked":  # cross-attention
      out_BLHK = blocked_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, cfg.scale_attention)
    else:
      out_BLHK = dot_product_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, bias_BHLS,
                                       scale=cfg.scale_attention)
    y_BLD = self._out(out_BLHK)
    return y_BLD if cache_kv is None else (y_BLD, (k_BSGK, v_BSGK))

  def _out(self, out_BLHK):
    cfg = self.cfg
    h, k, d = cfg.num_heads, cfg.resolved_head_dim, cfg.d_model
    out_BLHK = nn.with_logical_constraint(out_BLHK, BLHK)
    out_init = fan_in_init(out_proj_scale(cfg), in_axis=(0, 1), out_axis=2)
    y_BLD = Einsum((h, k, d), ("heads", "kv", "embed"), "blhk,hkd->bld", out_init, cfg,
                   name="out")(out_BLHK.astype(compute_dtype(cfg)))
    return nn.with_logical_constraint(y_BLD, BLD)
