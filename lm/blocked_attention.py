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

from lm.rope import rotate

_barrier = jax.lax.optimization_barrier


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


def _heads_copy(x_BLNK, heads, rope, start, end, g, perm, scale=None):
  """Rows [start, end) of x's heads [heads[0], heads[1]), rotated by `rope` (cos, sin
  tables or None) and scaled, as a real copy in [B, G, ...] layout (perm of
  [B, L', G, R, K]). One fusion reads x."""
  x = x_BLNK[:, start:end, heads[0]:heads[1]]
  if rope is not None:
    x = rotate(x, rope[0][:, start:end], rope[1][:, start:end])
  if scale is not None:
    x = x * jnp.asarray(scale, x.dtype)
  b, l, n, k = x.shape
  return _barrier(jnp.transpose(x.reshape(b, l, g, n // g, k), perm))


_GRLK = (0, 2, 3, 1, 4)  # [B, L, G, R, K] -> [B, G, R, L, K]
_GKRL = (0, 2, 4, 3, 1)  # [B, L, G, R, K] -> [B, G, K, R, L]


# q, k and v are head ranges of the source arrays: `views` = ((source index, first head,
# end head) for q, k, v). Separate q, k, v arrays are three sources; a fused q|k|v
# projection is one, whose gradient is then assembled in one pass (no adds of the
# three input gradients of separate projections).

def _forward(srcs, bias, rope, views, scale, blocks):
  bias_B1LS, visible_B1L1 = bias if bias is not None else (None, None)
  (qi, *qh), (ki, *kh), (vi, *vh) = views
  g = kh[1] - kh[0]
  s = srcs[ki].shape[1]
  # Keys and values [B, G, S, K] (R = 1), and each block's key prefix copied from them.
  kt = _heads_copy(srcs[ki], kh, rope, 0, s, g, _GRLK)[:, :, 0]
  vt = _heads_copy(srcs[vi], vh, None, 0, s, g, _GRLK)[:, :, 0]
  qbs, qbs_t, probs, outs = [], [], [], []
  for start, end, kv_end in blocks:
    # The block's queries [B, G, R, l, K] (query head h = g * R + r), and their transpose
    # [B, G, K, R, l] for the backward's dk^T = q^T dS, both copied from q here.
    qb = _heads_copy(srcs[qi], qh, rope, start, end, g, _GRLK, scale)
    qbs.append(qb)
    qbs_t.append(_heads_copy(srcs[qi], qh, rope, start, end, g, _GKRL, scale))
    logits = jnp.einsum("bgrlk,bgsk->bgrls", qb, kt[:, :, :kv_end],
                        preferred_element_type=jnp.float32)
    if bias_B1LS is not None:
      logits = logits + bias_B1LS[:, :, None, start:end, :kv_end]
    p = _softmax(logits)
    if visible_B1L1 is not None:  # rows with no visible key: zero probabilities, zero output
      p = p * visible_B1L1[:, :, None, start:end]
    p = p.astype(vt.dtype)
    probs.append(p)
    outs.append(jnp.einsum("bgrls,bgsk->bgrlk", p, vt[:, :, :kv_end]))
  ot = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)  # [B, G, R, L, K]
  b, _, r, l, k = ot.shape
  out_BLHK = jnp.transpose(ot, (0, 3, 1, 2, 4)).reshape(b, l, g * r, k)
  return out_BLHK, (tuple(qbs_t), kt, vt, bias, rope, tuple(probs), tuple(outs))


# `bias`: None, or (additive mask bias [B, 1, L, S], row visibility [B, 1, L, 1] as 0/1).
# `dtypes`: the sources' dtype names (static), for their gradients.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _attention(srcs, bias, rope, views, dtypes, scale, blocks):
  return _forward(srcs, bias, rope, views, scale, blocks)[0]


def _attention_fwd(srcs, bias, rope, views, dtypes, scale, blocks):
  return _forward(srcs, bias, rope, views, scale, blocks)


def _attention_bwd(views, dtypes, scale, blocks, residuals, dout_BLHK):
  qbs_t, kt, vt, bias, rope, probs, outs = residuals
  b, g, s, k = kt.shape
  dqs, dk_t, dv_t = [None] * len(blocks), None, None
  # The last block attends every key: its dk^T / dv^T start the sums, and the earlier
  # blocks add into their key prefix in place (no padded copies of the full sums).
  for i in reversed(range(len(blocks))):
    (start, end, kv_end), q_t, p, ob = blocks[i], qbs_t[i], probs[i], outs[i]
    heads = (0, dout_BLHK.shape[2])
    dob = _heads_copy(dout_BLHK, heads, None, start, end, g, _GRLK)  # [B, G, R, l, K]
    dob_t = _heads_copy(dout_BLHK, heads, None, start, end, g, _GKRL)  # [B, G, K, R, l]
    # rowsum(dP * P) = rowsum(dO * O): one pass over [.., l, K] instead of [.., l, S].
    rowsum = jnp.sum(dob.astype(jnp.float32) * ob.astype(jnp.float32), axis=-1, keepdims=True)
    dp = jnp.einsum("bgrlk,bgsk->bgrls", dob, vt[:, :, :kv_end],
                    preferred_element_type=jnp.float32)
    ds = (p.astype(jnp.float32) * (dp - rowsum)).astype(kt.dtype)
    dqs[i] = jnp.einsum("bgrls,bgsk->bgrlk", ds, kt[:, :, :kv_end])
    # dk^T and dv^T [B, G, K, S]: plain GEMMs on the copied transposes of q and dO.
    dk_i = jnp.einsum("bgkrl,bgrls->bgks", q_t, ds, preferred_element_type=jnp.float32)
    dv_i = jnp.einsum("bgkrl,bgrls->bgks", dob_t, p, preferred_element_type=jnp.float32)
    if dk_t is None:
      dk_t, dv_t = dk_i, dv_i
    else:
      dk_t = dk_t.at[..., :kv_end].add(dk_i)
      dv_t = dv_t.at[..., :kv_end].add(dv_i)
  dqt = dqs[0] if len(dqs) == 1 else jnp.concatenate(dqs, axis=3)  # [B, G, R, L, K]
  r, l = dqt.shape[2], dqt.shape[3]
  dq = (jnp.transpose(dqt, (0, 3, 1, 2, 4)).reshape(b, l, g * r, k)
        * jnp.asarray(scale, dqt.dtype))
  dk = jnp.transpose(_barrier(dk_t), (0, 3, 1, 2))
  dv = jnp.transpose(_barrier(dv_t), (0, 3, 1, 2))
  if rope is not None:  # the rotation's backward is its inverse
    dq = rotate(dq, *rope, inverse=True)
    dk = rotate(dk, *rope, inverse=True)
  # Each source's gradient: its views' gradients in head order (they tile it).
  dsrcs = []
  for i, dtype in enumerate(dtypes):
    parts = sorted((view[1], grad) for view, grad in zip(views, (dq, dk, dv)) if view[0] == i)
    grad = parts[0][1] if len(parts) == 1 else jnp.concatenate([p for _, p in parts], axis=2)
    dsrcs.append(grad.astype(dtype))
  dbias = jax.tree_util.tree_map(jnp.zeros_like, bias)
  drope = None if rope is None else (jnp.zeros_like(rope[0]), jnp.zeros_like(rope[1]))
  return tuple(dsrcs), dbias, drope


_attention.defvjp(_attention_fwd, _attention_bwd)


def _attend(srcs, views, mask_B1LS, scale, causal, block, rope, head_dim, length, kv_length):
  bias = None
  if mask_B1LS is not None:
    # A finite fill (not -inf) keeps fully masked rows NaN-free; their probabilities are
    # zeroed inside the softmax's pass (`visible`), not in a pass over the output.
    visible_B1L1 = jnp.any(mask_B1LS, axis=-1, keepdims=True).astype(jnp.float32)
    bias = (jnp.where(mask_B1LS, 0.0, jnp.finfo(jnp.float32).min), visible_B1L1)
  scale_value = 1.0 / float(head_dim) ** 0.5 if scale else 1.0
  blocks = query_blocks(length, kv_length, causal, block)
  dtypes = tuple(jnp.dtype(x.dtype).name for x in srcs)
  return _attention(tuple(srcs), bias, rope, views, dtypes, scale_value, blocks)


def blocked_attention(q_BLHK: jax.Array, k_BSGK: jax.Array, v_BSGK: jax.Array,
                      mask_B1LS: Optional[jax.Array], scale: bool = True, causal: bool = False,
                      block: int = 64, rope: Optional[tuple] = None) -> jax.Array:
  """softmax(q k^T / sqrt(K)) v, [B, L, H, K], as `attention.dot_product_attention` (no bias).

  `causal=True` promises that `mask_B1LS` hides every key after its query (token
  index against token index), so key blocks above the diagonal may be skipped; a
  mask that does not (prefix-LM, decoding against a cache) must pass False.

  `rope` = (cos, sin) tables [B, L, K/2] (lm/rope.py `rope_tables`, S == L) rotates q
  and k here, inside the layout copies: the same numbers as rotating them first, minus
  a pass over q and k each way.
  """
  h, g = q_BLHK.shape[2], k_BSGK.shape[2]
  if h % g:
    raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({g})")
  views = ((0, 0, h), (1, 0, g), (2, 0, g))
  return _attend((q_BLHK, k_BSGK, v_BSGK), views, mask_B1LS, scale, causal, block, rope,
                 q_BLHK.shape[-1], q_BLHK.shape[1], k_BSGK.shape[1])


def blocked_self_attention(qkv_BLNK: jax.Array, num_heads: int, kv_heads: int,
                           mask_B1LS: Optional[jax.Array], scale: bool = True,
                           causal: bool = False, block: int = 64,
                           rope: Optional[tuple] = None) -> jax.Array:
  """`blocked_attention` of a fused projection: qkv [B, L, H + 2G, K] holds q's H heads,
  then k's G, then v's G. Its gradient comes out as one array in one pass."""
  h, g = num_heads, kv_heads
  if h % g or qkv_BLNK.shape[2] != h + 2 * g:
    raise ValueError(f"qkv has {qkv_BLNK.shape[2]} heads; expected num_heads ({h}) + "
                     f"2 * kv_heads ({g}), with num_heads a multiple of kv_heads")
  views = ((0, 0, h), (0, h, h + g), (0, h + g, h + 2 * g))
  l = qkv_BLNK.shape[1]
  return _attend((qkv_BLNK,), views, mask_B1LS, scale, causal, block, rope,
                 qkv_BLNK.shape[-1], l, l)
