"""Rotary position embedding (RoPE), rotate-half convention: pairs are (x[i], x[i + K/2]).

The angles' cosines and sines are computed once per call into [B, L, K/2] tables
(`rope_tables`) and the rotation reads them. Computing them inline let XLA fuse
the cos/sin into every consumer: the [B, L, H, K] rotation, each attention
block's layout copy and their backward recomputed them per element and per head
(about 20 ms of a 375 ms ref_tiny step on CPU).

Positions are per token, so packed documents that restart at 0 are encoded
exactly as if they were alone. Everything is float32; `rotate` returns x's dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lm.unfused import apart


def rope_frequencies(head_dim: int, base: float) -> jax.Array:
  """Inverse frequencies base^(-2i/K), i < K/2, float32."""
  return base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)


def rope_tables(positions_BL: jax.Array, head_dim: int, base: float = 10000.0):
  """(cos, sin) [B, L, K/2] float32 of position * frequency, materialised once."""
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
  freqs = rope_frequencies(head_dim, base)

  def tables(positions):
    angles_BLF = positions.astype(jnp.float32)[..., None] * freqs
    return jnp.cos(angles_BLF), jnp.sin(angles_BLF)

  # XLA:CPU would fuse the sin/cos into every consumer, per element and head.
  return apart(tables, positions_BL)


def rotate(x_BLNK: jax.Array, cos_BLF: jax.Array, sin_BLF: jax.Array,
           inverse: bool = False) -> jax.Array:
  """x rotated by the tables' angles ([B, L, N, K], any number N of heads).

  inverse=True rotates by minus the angles: the rotation's transpose, which is
  also its backward (the gradient of rotate(x) w.r.t. x applied to a cotangent).
  """
  x1, x2 = jnp.split(x_BLNK.astype(jnp.float32), 2, axis=-1)
  c, s = cos_BLF[:, :, None, :], sin_BLF[:, :, None, :]
  if inverse:
    s = -s
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x_BLNK.dtype)


def apply_rope(x_BLHK: jax.Array, positions_BL: jax.Array, base: float = 10000.0) -> jax.Array:
  """x [B, L, H, K] with rotary position embedding at per-token positions."""
  return rotate(x_BLHK, *rope_tables(positions_BL, x_BLHK.shape[-1], base))
