"""Fused causal self-attention on CPU: one C++ kernel (lm/kernels/attention.cc) per
direction, called through XLA's FFI, in place of the blocked path's library GEMMs,
softmax fusions and layout copies.

It reads q, k and v straight from the fused [B, L, H + 2G, K] projection, applies RoPE
and the 1/sqrt(K) scale in cache-resident buffers, skips key blocks above the
diagonal (`causal`), and writes the output in [B, L, H, K] and the gradient in the
projection's layout, so no [B, L, H, K] <-> [B, H, L, K] copy reaches memory. The
softmax is saved for the backward, as on the blocked path.

Numbers equal `attention.dot_product_attention`'s to float32 rounding
(tests/test_cpu_attention.py): the same mask semantics (padding, packed segments,
rows that see no key give zeros), grouped kv heads, RoPE.

Scope: float32 self-attention without a learned bias or a KV cache, head dim and
length multiples of 16. `supported` says whether a call qualifies; the module
falls back to the blocked path otherwise. Under a device mesh the kernel runs per
batch shard inside `shard_map` (heads are gathered: the kernel needs whole q|k|v
rows). The library is compiled on first use (lm/kernels/build.py); without a C++
compiler `unavailable_reason()` says why and "auto" keeps the blocked path.
"""
from __future__ import annotations

import ctypes
import functools
import logging
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from lm.kernels.build import KernelBuildError, build

log = logging.getLogger(__name__)

_FORWARD, _BACKWARD = "lm_attention_forward", "lm_attention_backward"
MULTIPLE = 16  # head dim and length: the kernel's vector width
# kv heads per work item (a divisor of kv_heads); 0: the kernel's choice, whole batch rows
# unless they are too few for the threads. Read at trace time; tests set it.
KV_HEADS_PER_ITEM = 0


@functools.cache
def unavailable_reason() -> Optional[str]:
  """None once the kernel is compiled, loaded and registered with XLA; else why not."""
  if jax.default_backend() != "cpu":
    return f"the default backend is {jax.default_backend()}, not cpu"
  try:
    library = ctypes.cdll.LoadLibrary(str(build("attention.cc")))
  except (KernelBuildError, OSError) as e:
    log.warning("fused CPU attention unavailable, using the blocked path: %s", e)
    return str(e)
  jax.ffi.register_ffi_target(_FORWARD, jax.ffi.pycapsule(library.LmAttentionForward),
                              platform="cpu")
  jax.ffi.register_ffi_target(_BACKWARD, jax.ffi.pycapsule(library.LmAttentionBackward),
                              platform="cpu")
  return None


def supported(qkv_BLNK: jax.Array, cache: bool, bias: bool) -> bool:
  """Whether the kernel can run this self-attention call (else use the blocked path)."""
  _, l, _, k = qkv_BLNK.shape
  return (not cache and not bias and qkv_BLNK.dtype == jnp.float32
          and k % MULTIPLE == 0 and l % MULTIPLE == 0 and unavailable_reason() is None)


def _attrs(num_heads, kv_heads, causal, scale):
  return dict(num_heads=np.int64(num_heads), kv_heads=np.int64(kv_heads),
              causal=np.int64(causal), scale=np.float32(scale),
              kv_heads_per_item=np.int64(KV_HEADS_PER_ITEM))


def _forward_call(qkv, mask, cos, sin, num_heads, kv_heads, causal, scale, save_probs):
  b, l, _, k = qkv.shape
  probs_shape = (b, num_heads, l, l) if save_probs else (0,)
  return jax.ffi.ffi_call(
      _FORWARD, (jax.ShapeDtypeStruct((b, l, num_heads, k), jnp.float32),
                 jax.ShapeDtypeStruct(probs_shape, jnp.float32)),
      vmap_method="sequential")(qkv, mask, cos, sin, **_attrs(num_heads, kv_heads, causal, scale))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _attention(qkv, mask, cos, sin, num_heads, kv_heads, causal, scale):
  return _forward_call(qkv, mask, cos, sin, num_heads, kv_heads, causal, scale, False)[0]


def _attention_fwd(qkv, mask, cos, sin, num_heads, kv_heads, causal, scale):
  out, probs = _forward_call(qkv, mask, cos, sin, num_heads, kv_heads, causal, scale, True)
  return out, (qkv, mask, cos, sin, probs)


def _attention_bwd(num_heads, kv_heads, causal, scale, residuals, dout):
  qkv, mask, cos, sin, probs = residuals
  dqkv = jax.ffi.ffi_call(_BACKWARD, jax.ShapeDtypeStruct(qkv.shape, jnp.float32),
                          vmap_method="sequential")(
      qkv, cos, sin, probs, dout.astype(jnp.float32),
      **_attrs(num_heads, kv_heads, causal, scale))
  # The mask is an integer input: its cotangent is float0. cos and sin are constants.
  return (dqkv, np.zeros(mask.shape, jax.dtypes.float0), jnp.zeros_like(cos),
          jnp.zeros_like(sin))


_attention.defvjp(_attention_fwd, _attention_bwd)


def _batch_spec(batch: int) -> Optional[P]:
  """The batch axis's mesh axes under the current mesh and logical rules, or None when
  the call needs no shard_map (one device, or a batch the shards cannot split)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return None
  axes = nn.logical_to_mesh_axes(("batch",))[0]
  if axes is None:
    return None
  names = (axes,) if isinstance(axes, str) else tuple(axes)
  shards = int(np.prod([mesh.shape[a] for a in names]))
  return P(axes) if shards > 1 and batch % shards == 0 else None


def fused_self_attention(qkv_BLNK: jax.Array, num_heads: int, kv_heads: int,
                         mask_B1LS: Optional[jax.Array], scale: bool = True,
                         causal: bool = False, rope: Optional[tuple] = None) -> jax.Array:
  """softmax(q k^T / sqrt(K)) v [B, L, H, K] of a fused projection qkv [B, L, H + 2G, K]
  (q's H heads, then k's G, then v's G), as `blocked_self_attention`.

  `causal=True` promises that the mask hides every key after its query, so the
  kernel may skip them; `rope` = (cos, sin) [B, L, K/2] rotates q and k.
  """
  reason = unavailable_reason()  # also registers the kernel with XLA
  if reason is not None:
    raise RuntimeError(f"fused CPU attention is unavailable: {reason}")
  b, l, n, k = qkv_BLNK.shape
  h, g = num_heads, kv_heads
  if h % g or n != h + 2 * g:
    raise ValueError(f"qkv has {n} heads; expected num_heads ({h}) + 2 * kv_heads ({g}), "
                     f"with num_heads a multiple of kv_heads")
  if mask_B1LS is None:
    mask_BLS = jnp.ones((b, l, l), jnp.uint8)
  else:
    mask_BLS = jnp.broadcast_to(mask_B1LS, (b, 1, l, l))[:, 0].astype(jnp.uint8)
  cos, sin = rope if rope is not None else (jnp.zeros((0,), jnp.float32),) * 2
  scale_value = 1.0 / float(k) ** 0.5 if scale else 1.0

  def attend(qkv, mask, c, s):
    return _attention(qkv, mask, c, s, h, g, bool(causal), scale_value)

  spec = _batch_spec(b)
  if spec is not None:
    rope_spec = spec if rope is not None else P()
    attend = jax.shard_map(attend, in_specs=(spec, spec, rope_spec, rope_spec), out_specs=spec,
                           check_vma=False)
  return attend(qkv_BLNK.astype(jnp.float32), mask_BLS, cos, sin)
