"""Attention against naive numpy references: masks, GQA, RoPE, the module."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.attention import (MultiHeadAttention, apply_rope, attention_backend, dot_product_attention,
                          library_attention, make_attention_mask, sinusoidal_table)
from lm.config import ModelConfig

TOL = dict(atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- naive references

def naive_mask(q_seg, kv_seg, causal):
  """[B, L, S] bool, one (i, j) at a time."""
  b, l = q_seg.shape
  s = kv_seg.shape[1]
  m = np.zeros((b, l, s), bool)
  for bi in range(b):
    for i in range(l):
      for j in range(s):
        ok = q_seg[bi, i] != 0 and q_seg[bi, i] == kv_seg[bi, j]
        m[bi, i, j] = ok and (not causal or j <= i)
  return m


def naive_attention(q, k, v, mask_BLS):
  """Per-batch, per-head loop; query head h reads kv head h // (H / G)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, l, h, d = q.shape
  g = k.shape[2]
  out = np.zeros((b, l, h, d))
  for bi in range(b):
    for hi in range(h):
      gi = hi // (h // g)
      logits = q[bi, :, hi] @ k[bi, :, gi].T / np.sqrt(d)
      for i in range(l):
        allowed = mask_BLS[bi, i]
        if not allowed.any():
          continue  # fully masked row -> zeros
        row = np.where(allowed, logits[i], -np.inf)
        p = np.exp(row - row.max())
        p /= p.sum()
        out[bi, i, hi] = p @ v[bi, :, gi]
  return out


def naive_rope(x, positions, base):
  """Rotate each pair (x[i], x[i + K/2]) by angle pos * base^(-2i/K)."""
  x = np.asarray(x, np.float64)
  k = x.shape[-1]
  out = np.empty_like(x)
  for i in range(k // 2):
    theta = np.asarray(positions, np.float64)[:, :, None] * base ** (-2.0 * i / k)
    a, b = x[..., i], x[..., i + k // 2]
    out[..., i] = a * np.cos(theta) - b * np.sin(theta)
    out[..., i + k // 2] = b * np.cos(theta) + a * np.sin(theta)
  return out


def rand(key, *shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


# ---------------------------------------------------------------- masks + function

MASKS = {
    "causal": (np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]), True),
    "padding": (np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]), False),
    "segments": (np.array([[1, 1, 2, 2, 2, 3], [1, 2, 2, 3, 3, 3]]), False),
    "combined": (np.array([[1, 1, 2, 2, 0, 0], [1, 2, 2, 2, 3, 0]]), True),
}


@pytest.mark.parametrize("kind", list(MASKS))
def test_mask_matches_naive(kind):
  seg, causal = MASKS[kind]
  mask = make_attention_mask(jnp.asarray(seg), jnp.asarray(seg), causal=causal)
  assert mask.shape == (2, 1, 6, 6) and mask.dtype == jnp.bool_
  np.testing.assert_array_equal(np.asarray(mask[:, 0]), naive_mask(seg, seg, causal))


@pytest.mark.parametrize("kind", list(MASKS))
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_dot_product_attention_matches_naive(kind, kv_heads):
  seg, causal = MASKS[kind]
  q, k, v = rand(0, 2, 6, 4, 8), rand(1, 2, 6, kv_heads, 8), rand(2, 2, 6, kv_heads, 8)
  mask = make_attention_mask(jnp.asarray(seg), jnp.asarray(seg), causal=causal)
  out = dot_product_attention(q, k, v, mask)
  assert out.shape == (2, 6, 4, 8) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, naive_attention(q, k, v, naive_mask(seg, seg, causal)), **TOL)


@pytest.mark.parametrize("kind", list(MASKS))
@pytest.mark.parametrize("kv_heads", [4, 1])
def test_library_attention_matches_naive(kind, kv_heads):
  """The jax.nn.dot_product_attention path (cuDNN on GPUs) keeps our mask, GQA and padding rules;
  its "xla" implementation runs the same argument mapping on CPU."""
  seg, causal = MASKS[kind]
  q, k, v = rand(0, 2, 6, 4, 8), rand(1, 2, 6, kv_heads, 8), rand(2, 2, 6, kv_heads, 8)
  mask = make_attention_mask(jnp.asarray(seg), jnp.asarray(seg), causal=causal)
  out = library_attention(q, k, v, mask, None, True, "xla")
  np.testing.assert_allclose(out, naive_attention(q, k, v, naive_mask(seg, seg, causal)), **TOL)
  bias = rand(3, 1, 4, 6, 6)
  np.testing.assert_allclose(library_attention(q, k, v, mask, bias, False, "xla"),
                             dot_product_attention(q, k, v, mask, bias, scale=False), **TOL)


def test_attention_backend_choice():
  from lm import cpu_attention
  cpu = jax.default_backend() == "cpu"
  # On CPU the fused kernel where it compiles (a call outside its scope, e.g. bfloat16,
  # then takes the blocked path inside the module), else the blocked path.
  cpu_path = "cpu_fused" if cpu_attention.unavailable_reason() is None else "blocked"
  assert attention_backend("auto", jnp.float32) == (cpu_path if cpu else "xla")
  if jax.default_backend() != "gpu":
    assert attention_backend("auto", jnp.bfloat16) == (cpu_path if cpu else "xla")
  assert attention_backend("cudnn", jnp.float32) == "cudnn"
  assert attention_backend("xla", jnp.float32) == "xla"


def test_gqa_equals_mha_with_repeated_kv():
  q, k, v = rand(0, 2, 5, 6, 4), rand(1, 2, 5, 2, 4), rand(2, 2, 5, 2, 4)
  mask = make_attention_mask(jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32), True)
  gqa = dot_product_attention(q, k, v, mask)
  # Query heads 0-2 share kv head 0, heads 3-5 kv head 1: repeat each group in place.
  mha = dot_product_attention(q, jnp.repeat(k, 3, axis=2), jnp.repeat(v, 3, axis=2), mask)
  np.testing.assert_allclose(gqa, mha, **TOL)


def test_fully_masked_rows_are_finite_zeros():
  seg = jnp.array([[1, 1, 0, 0]])
  mask = make_attention_mask(seg, seg, causal=True)
  q, k, v = rand(0, 1, 4, 2, 4), rand(1, 1, 4, 2, 4), rand(2, 1, 4, 2, 4)
  out = dot_product_attention(q, k, v, mask)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_array_equal(out[:, 2:], 0.0)
  grads = jax.grad(lambda q, k, v: dot_product_attention(q, k, v, mask).sum(), (0, 1, 2))(q, k, v)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_low_precision_inputs_keep_dtype_and_stay_close():
  q, k, v = rand(0, 1, 6, 4, 8), rand(1, 1, 6, 2, 8), rand(2, 1, 6, 2, 8)
  seg = jnp.ones((1, 6), jnp.int32)
  mask = make_attention_mask(seg, seg, causal=True)
  out16 = dot_product_attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)), mask)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(jnp.float32), dot_product_attention(q, k, v, mask),
                             atol=5e-2)


# ---------------------------------------------------------------- positions

def test_rope_matches_naive_and_preserves_norm():
  x = rand(0, 2, 5, 3, 8)
  pos = jnp.array([[0, 1, 2, 3, 4], [0, 1, 0, 1, 2]])
  y = apply_rope(x, pos, 10000.0)
  np.testing.assert_allclose(y, naive_rope(x, pos, 10000.0), **TOL)
  np.testing.assert_allclose(jnp.linalg.norm(y, axis=-1), jnp.linalg.norm(x, axis=-1), **TOL)
  np.testing.assert_allclose(y[:, :1], x[:, :1], **TOL)  # position 0 is the identity


@pytest.mark.parametrize("offset", [1, 7, 100])
def test_rope_scores_depend_only_on_relative_position(offset):
  q, k = rand(0, 1, 6, 2, 8), rand(1, 1, 6, 2, 8)
  pos = jnp.array([[0, 3, 5, 6, 9, 12]])

  def scores(p):
    return jnp.einsum("blhk,bshk->bhls", apply_rope(q, p, 10000.0), apply_rope(k, p, 10000.0))

  np.testing.assert_allclose(scores(pos), scores(pos + offset), atol=1e-4, rtol=1e-5)


def test_sinusoidal_table():
  table = sinusoidal_table(10, 8)
  assert table.shape == (10, 8)
  np.testing.assert_allclose(table[0], [0, 0, 0, 0, 1, 1, 1, 1], **TOL)
  np.testing.assert_allclose(table[3, 0], np.sin(3.0), **TOL)


# ---------------------------------------------------------------- module

def _module_case(num_kv_heads, position):
  cfg = ModelConfig(d_model=16, num_heads=4, num_kv_heads=num_kv_heads, position=position)
  x = rand(3, 2, 6, 16)
  pos = jnp.array([[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 0]])
  seg = jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 2, 0]])
  mask = make_attention_mask(seg, seg, causal=True)
  mha = MultiHeadAttention(cfg)
  params = nn.unbox(mha.init(jax.random.key(0), x, pos, mask))["params"]
  return cfg, mha, params, x, pos, seg, mask


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_mha_module_matches_naive(position):
  cfg, mha, params, x, pos, seg, mask = _module_case(0, position)
  out = mha.apply({"params": params}, x, pos, mask)
  w = {n: np.asarray(params[n]["kernel"], np.float64) for n in ("query", "key", "value", "out")}
  xn = np.asarray(x, np.float64)
  q = np.einsum("bld,dhk->blhk", xn, w["query"])
  k = np.einsum("bld,dhk->blhk", xn, w["key"])
  v = np.einsum("bld,dhk->blhk", xn, w["value"])
  if position == "rope":
    q, k = naive_rope(q, pos, cfg.rope_base), naive_rope(k, pos, cfg.rope_base)
  o = naive_attention(q, k, v, naive_mask(np.asarray(seg), np.asarray(seg), True))
  np.testing.assert_allclose(out, np.einsum("blhk,hkd->bld", o, w["out"]), **TOL)


def test_gqa_module_equals_mha_module_with_repeated_kv_kernels():
  _, gqa, params, x, pos, _, mask = _module_case(2, "rope")
  assert params["key"]["kernel"].shape == (16, 2, 4)
  mha = MultiHeadAttention(ModelConfig(d_model=16, num_heads=4, num_kv_heads=4))
  mha_params = dict(params)
  for name in ("key", "value"):
    mha_params[name] = {"kernel": jnp.repeat(params[name]["kernel"], 2, axis=1)}
  np.testing.assert_allclose(gqa.apply({"params": params}, x, pos, mask),
                             mha.apply({"params": mha_params}, x, pos, mask), **TOL)


def test_mask_with_explicit_positions_for_offset_queries():
  # Two queries at key indices 3 and 4 (e.g. decoding against a cache of 6 slots).
  q_seg, kv_seg = jnp.ones((1, 2), jnp.int32), jnp.array([[1, 1, 1, 1, 1, 0]])
  mask = make_attention_mask(q_seg, kv_seg, causal=True, q_positions=jnp.array([[3, 4]]),
                             kv_positions=jnp.arange(6)[None])
  np.testing.assert_array_equal(mask[0, 0], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]])
