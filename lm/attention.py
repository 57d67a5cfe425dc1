"""Attention: masks, positional encodings (RoPE, sinusoidal), the pure attention
function and the multi-head (GQA/MQA) attention module.

Shape suffixes: B batch, L query length, S key/value length, H query heads,
G key/value heads (H = G * R, R query heads per kv head), K head dim, D d_model.

Logical names of the module:
  params:      query kernel ("embed","heads","kv"); key/value kernels
               ("embed","kv_heads","kv"); out kernel ("heads","kv","embed").
  activations: q and the attention output ("batch","length","act_heads","kv");
               k and v ("batch","length","act_kv_heads","kv") (G may be smaller
               than H, so kv heads get their own rule); module output
               ("batch","length","act_embed").
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.config import ModelConfig
from lm.layers import BLD, Einsum, compute_dtype, fan_in_init, out_proj_scale

BLHK = ("batch", "length", "act_heads", "kv")
BSGK = ("batch", "length", "act_kv_heads", "kv")


# ---------------------------------------------------------------- masks
# Each piece is a bool [B, L, S] (True = may attend); make_attention_mask ANDs
# them. A prefix-LM mask is `causal | (kv index < prefix length)` in place of
# `causal`, an encoder mask simply drops `causal`.

def causal_mask(q_index_BL: jax.Array, kv_index_BS: jax.Array) -> jax.Array:
  """Query i may see key j iff j <= i."""
  return q_index_BL[:, :, None] >= kv_index_BS[:, None, :]


def segment_mask(q_segment_ids_BL: jax.Array, kv_segment_ids_BS: jax.Array) -> jax.Array:
  """Same document only; segment id 0 (padding) never attends and is never attended."""
  same = q_segment_ids_BL[:, :, None] == kv_segment_ids_BS[:, None, :]
  return same & (q_segment_ids_BL[:, :, None] != 0) & (kv_segment_ids_BS[:, None, :] != 0)


def make_attention_mask(q_segment_ids_BL: jax.Array, kv_segment_ids_BS: jax.Array,
                        causal: bool, q_positions: Optional[jax.Array] = None,
                        kv_positions: Optional[jax.Array] = None) -> jax.Array:
  """Bool mask [B, 1, L, S] combining padding, packing (segment ids) and causality.

  Causality compares token indices: `q_positions` / `kv_positions` ([B, L] / [B, S])
  default to 0..L-1 / 0..S-1; pass them when the query block does not start at
  key index 0 (e.g. decoding against a KV cache). Per-document positions that
  restart at 0 also work, since tokens of other documents are masked anyway.
  """
  b, l = q_segment_ids_BL.shape
  s = kv_segment_ids_BS.shape[1]
  mask_BLS = segment_mask(q_segment_ids_BL, kv_segment_ids_BS)
  if causal:
    if q_positions is None:
      q_positions = jnp.broadcast_to(jnp.arange(l), (b, l))
    if kv_positions is None:
      kv_positions = jnp.broadcast_to(jnp.arange(s), (b, s))
    mask_BLS = mask_BLS & causal_mask(q_positions, kv_positions)
  return mask_BLS[:, None, :, :]


# ---------------------------------------------------------------- attention

def dot_product_attention(q_BLHK: jax.Array, k_BSGK: jax.Array, v_BSGK: jax.Array,
                          mask_B1LS: Optional[jax.Array] = None) -> jax.Array:
  """softmax(q k^T / sqrt(K)) v with grouped kv heads; returns [B, L, H, K].

  Query head h uses kv head h // R (R = H / G): the grouping is a reshape of q,
  k/v are never repeated. Logits and softmax are float32 whatever the input
  dtype. A query row with no visible key (padding) returns zeros, not NaN.
  """
  b, l, h, k = q_BLHK.shape
  g = k_BSGK.shape[2]
  if h % g:
    raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({g})")
  q_BLGRK = q_BLHK.reshape(b, l, g, h // g, k)
  logits_BGRLS = jnp.einsum("blgrk,bsgk->bgrls", q_BLGRK, k_BSGK,
                            preferred_element_type=jnp.float32)
  logits_BGRLS = logits_BGRLS * (1.0 / jnp.sqrt(jnp.float32(k)))
  if mask_B1LS is not None:
    mask_B11LS = mask_B1LS[:, :, None, :, :]
    # A finite fill (not -inf) keeps fully masked rows NaN-free; they are zeroed below.
    logits_BGRLS = jnp.where(mask_B11LS, logits_BGRLS, jnp.finfo(jnp.float32).min)
  probs_BGRLS = jax.nn.softmax(logits_BGRLS, axis=-1)
  if mask_B1LS is not None:
    probs_BGRLS = jnp.where(mask_B11LS, probs_BGRLS, 0.0)
  out_BLGRK = jnp.einsum("bgrls,bsgk->blgrk", probs_BGRLS.astype(v_BSGK.dtype), v_BSGK)
  return out_BLGRK.reshape(b, l, h, k).astype(q_BLHK.dtype)


# ---------------------------------------------------------------- positions

def rope_frequencies(head_dim: int, base: float) -> jax.Array:
  """Inverse frequencies base^(-2i/K), i < K/2, float32."""
  return base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def apply_rope(x_BLHK: jax.Array, positions_BL: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary embedding, rotate-half convention: pairs are (x[i], x[i + K/2]).

  Positions are per token, so packed documents that restart at 0 are encoded
  exactly as if they were alone. Computed in float32, returned in x's dtype.
  """
  k = x_BLHK.shape[-1]
  if k % 2:
    raise ValueError(f"RoPE needs an even head dim, got {k}")
  angles_BLF = positions_BL.astype(jnp.float32)[..., None] * rope_frequencies(k, base)
  cos_BL1K = jnp.cos(jnp.concatenate([angles_BLF, angles_BLF], -1))[:, :, None, :]
  sin_BL1K = jnp.sin(jnp.concatenate([angles_BLF, angles_BLF], -1))[:, :, None, :]
  x = x_BLHK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x * cos_BL1K + rotated * sin_BL1K).astype(x_BLHK.dtype)


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


# ---------------------------------------------------------------- module

class MultiHeadAttention(nn.Module):
  """Self-attention with cfg.num_heads query heads and cfg.kv_heads kv heads (GQA/MQA).

  Params: query/key/value/out, each `{name}/kernel`, no biases. RoPE is applied
  to q and k when cfg.position == "rope".
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array,
               mask_B1LS: Optional[jax.Array]) -> jax.Array:
    cfg = self.cfg
    d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.resolved_head_dim
    in_init = fan_in_init(1.0, in_axis=0, out_axis=(1, 2))
    q_BLHK = Einsum((d, h, k), ("embed", "heads", "kv"), "bld,dhk->blhk", in_init, cfg,
                    name="query")(x_BLD)
    k_BSGK = Einsum((d, g, k), ("embed", "kv_heads", "kv"), "bsd,dgk->bsgk", in_init, cfg,
                    name="key")(x_BLD)
    v_BSGK = Einsum((d, g, k), ("embed", "kv_heads", "kv"), "bsd,dgk->bsgk", in_init, cfg,
                    name="value")(x_BLD)
    if cfg.position == "rope":
      q_BLHK = apply_rope(q_BLHK, positions_BL, cfg.rope_base)
      k_BSGK = apply_rope(k_BSGK, positions_BL, cfg.rope_base)
    q_BLHK = nn.with_logical_constraint(q_BLHK, BLHK)
    k_BSGK = nn.with_logical_constraint(k_BSGK, BSGK)
    v_BSGK = nn.with_logical_constraint(v_BSGK, BSGK)

    out_BLHK = dot_product_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS)
    out_BLHK = nn.with_logical_constraint(out_BLHK, BLHK)
    out_init = fan_in_init(out_proj_scale(cfg), in_axis=(0, 1), out_axis=2)
    y_BLD = Einsum((h, k, d), ("heads", "kv", "embed"), "blhk,hkd->bld", out_init, cfg,
                   name="out")(out_BLHK.astype(compute_dtype(cfg)))
    return nn.with_logical_constraint(y_BLD, BLD)
