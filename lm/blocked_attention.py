"""Attention in [B, H, L, K] layout with its own backward, skipping fully masked causal blocks.

Why (XLA:CPU, measured in experiments/BENCHMARKS.md): the einsum path
(`attention.dot_product_attention`) contracts [B, L, H, K] operands whose batch
dims (b, h) are not leading, so XLA:CPU transposes around every matmul, and
autodiff's dk = dS^T q and dv = P^T dO contract the query dim, the leading dim
of both operands: transposed-A batched GEMMs, which XLA:CPU runs on Eigen at a
fraction of YNNPACK's speed. Here q, k, v are copied to [B, G, R, L, K] once,
every matmul of the forward and the backward is a plain or transposed-B GEMM
(dk^T = q^T dS and dv^T = dO^T P on copied transposes of the small q and dO),
and the backward uses the saved probabilities with rowsum(dO * O) in place of
rowsum(dP * P).

With `causal` (the mask hides every key after its query, token index against
token index), queries run in blocks of `block` and block i attends keys
[0, (i + 1) * block) only: the key blocks above the diagonal, fully masked, are
never computed. At L = 2 * block that is 3/4 of the work, at L = 4 * block 5/8.

Numbers equal `dot_product_attention`'s (tests/test_blocked_attention.py): the
same mask semantics (padding, packed segments, fully masked rows give zeros),
grouped kv heads, float32 logits and softmax.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

_barrier = jax.lax.optimization_barrier


def _copy(a: jax.Array, perm) -> jax.Array:
  """transpose(a, perm) as a real copy: barriers keep XLA from folding it into the
  neighbouring dots, which would bring back the transposed operand layouts."""
  return _barrier(jnp.transpose(_barrier(a), perm))


# More blocks skip more work but each adds ops to the compiled program (about 12 per
# layer), so long sequences get longer blocks.
MAX_QUERY_BLOCKS = 16


def query_blocks(length: int, kv_length: int, causal: bool, block: int) -> tuple:
  """((query start, query end, key end), ...): the key prefix each query block attends.

  One block (all keys) unless the attention is causal self-attention whose length
  is a multiple of the block and longer than one block. The block is `block`, or
  length / MAX_QUERY_BLOCKS if that is longer.
  """
  if block > 0:
    block = max(block, -(-length // MAX_QUERY_BLOCKS))
  if not causal or block <= 0 or length != kv_length or length % block or length <= block:
    return ((0, length, kv_length),)
  return tuple((i * block, (i + 1) * block, (i + 1) * block) for i in range(length // block))


def _softmax(logits):
  e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  return e * (1.0 / jnp.sum(e, axis=-1, keepdims=True))


def _forward(q_BLHK, k_BSGK, v_BSGK, bias_B1LS, scale, blocks):
  b, l, h, k = q_BLHK.shape
  g = k_BSGK.shape[2]
  # [B, G, R, L, K]: query head h = g * R + r, so each kv head's queries form one GEMM operand.
  qt = _copy((q_BLHK * jnp.asarray(scale, q_BLHK.dtype)).reshape(b, l, g, h // g, k), (0, 2, 3, 1, 4))
  kt = _copy(k_BSGK, (0, 2, 1, 3))  # [B, G, S, K]
  vt = _copy(v_BSGK, (0, 2, 1, 3))
  probs, outs = [], []
  for start, end, kv_end in blocks:
    logits = jnp.einsum("bgrlk,bgsk->bgrls", qt[:, :, :, start:end], kt[:, :, :kv_end],
                        preferred_element_type=jnp.float32)
    if bias_B1LS is not None:
      logits = logits + bias_B1LS[:, :, None, start:end, :kv_end]
    p = _softmax(logits).astype(v_BSGK.dtype)
    probs.append(p)
    outs.append(jnp.einsum("bgrls,bgsk->bgrlk", p, vt[:, :, :kv_end]))
  ot = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)  # [B, G, R, L, K]
  out_BLHK = jnp.transpose(ot, (0, 3, 1, 2, 4)).reshape(b, l, h, k)
  return out_BLHK, (qt, kt, vt, bias_B1LS, tuple(probs), ot)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q_BLHK, k_BSGK, v_BSGK, bias_B1LS, scale, blocks):
  return _forward(q_BLHK, k_BSGK, v_BSGK, bias_B1LS, scale, blocks)[0]


def _attention_fwd(q_BLHK, k_BSGK, v_BSGK, bias_B1LS, scale, blocks):
  return _forward(q_BLHK, k_BSGK, v_BSGK, bias_B1LS, scale, blocks)


def _attention_bwd(scale, blocks, residuals, dout_BLHK):
  qt, kt, vt, bias_B1LS, probs, ot = residuals
  b, g, r, l, k = qt.shape
  s = kt.shape[2]
  dot = _copy(dout_BLHK.reshape(b, l, g, r, k), (0, 2, 3, 1, 4))  # [B, G, R, L, K]
  # rowsum(dP * P) = rowsum(dO * O): one pass over [.., L, K] instead of [.., L, S].
  rowsum = jnp.sum(dot.astype(jnp.float32) * ot.astype(jnp.float32), axis=-1, keepdims=True)
  q_t = _copy(qt, (0, 1, 4, 2, 3))  # [B, G, K, R, L]
  dout_t = _copy(dot, (0, 1, 4, 2, 3))
  dqs, dk_t, dv_t = [], 0.0, 0.0
  for (start, end, kv_end), p in zip(blocks, probs):
    dp = jnp.einsum("bgrlk,bgsk->bgrls", dot[:, :, :, start:end], vt[:, :, :kv_end],
                    preferred_element_type=jnp.float32)
    ds = (p.astype(jnp.float32) * (dp - rowsum[:, :, :, start:end])).astype(qt.dtype)
    dqs.append(jnp.einsum("bgrls,bgsk->bgrlk", ds, kt[:, :, :kv_end]))
    pad = ((0, 0),) * 3 + ((0, s - kv_end),)
    # dk^T and dv^T [B, G, K, S]: plain GEMMs on the copied transposes of q and dO.
    dk_t = dk_t + jnp.pad(jnp.einsum("bgkrl,bgrls->bgks", q_t[..., start:end], ds,
                                     preferred_element_type=jnp.float32), pad)
    dv_t = dv_t + jnp.pad(jnp.einsum("bgkrl,bgrls->bgks", dout_t[..., start:end], p,
                                     preferred_element_type=jnp.float32), pad)
  dqt = dqs[0] if len(dqs) == 1 else jnp.concatenate(dqs, axis=3)
  dq = (jnp.transpose(dqt, (0, 3, 1, 2, 4)).reshape(b, l, g * r, k)
        * jnp.asarray(scale, dqt.dtype)).astype(qt.dtype)
  dk = jnp.transpose(_barrier(dk_t), (0, 3, 1, 2)).astype(kt.dtype)
  dv = jnp.transpose(_barrier(dv_t), (0, 3, 1, 2)).astype(vt.dtype)
  dbias = None if bias_B1LS is None else jnp.zeros_like(bias_B1LS)
  return dq, dk, dv, dbias


_attention.defvjp(_attention_fwd, _attention_bwd)


def blocked_attention(q_BLHK: jax.Array, k_BSGK: jax.Array, v_BSGK: jax.Array,
                      mask_B1LS: Optional[jax.Array], scale: bool = True, causal: bool = False,
                      block: int = 64) -> jax.Array:
  """softmax(q k^T / sqrt(K)) v, [B, L, H, K], as `attention.dot_product_attention` (no bias).

  `causal=True` promises that `mask_B1LS` hides every key after its query (token
  index against token index), so key blocks above the diagonal may be skipped; a
  mask that does not (prefix-LM, decoding against a cache) must pass False.
  """
  h, g = q_BLHK.shape[2], k_BSGK.shape[2]
  if h % g:
    raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({g})")
  bias_B1LS = None
  if mask_B1LS is not None:
    # A finite fill (not -inf) keeps fully masked rows NaN-free; they are zeroed below.
    bias_B1LS = jnp.where(mask_B1LS, 0.0, jnp.finfo(jnp.float32).min)
  scale_value = 1.0 / float(q_BLHK.shape[-1]) ** 0.5 if scale else 1.0
  blocks = query_blocks(q_BLHK.shape[1], k_BSGK.shape[1], causal, block)
  out_BLHK = _attention(q_BLHK, k_BSGK, v_BSGK, bias_B1LS, scale_value, blocks)
  if mask_B1LS is not None:
    visible_BL11 = jnp.any(mask_B1LS[:, 0], axis=-1)[:, :, None, None]
    out_BLHK = out_BLHK * visible_BL11.astype(out_BLHK.dtype)
  return out_BLHK
