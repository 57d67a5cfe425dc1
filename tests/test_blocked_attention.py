"""The blocked attention (lm/blocked_attention.py) against the einsum reference.

It must give `dot_product_attention`'s outputs and gradients for every mask the
models build (padding, packed segments, causal, bidirectional, cross-attention,
GQA), skip the causal key blocks it promises to skip, and never be given a
non-causal mask as causal (prefix-LM).
"""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.attention import dot_product_attention, make_attention_mask
from lm.blocked_attention import (MAX_QUERY_BLOCKS, blocked_attention, blocked_self_attention,
                                  query_blocks)
from lm.config import ModelConfig
from lm.models import DecoderLM
from lm.rope import apply_rope, rope_tables, rotate


def _qkv(b, l, s, h, g, k, dtype=jnp.float32, seed=0):
  kq, kk, kv, kd = jax.random.split(jax.random.PRNGKey(seed), 4)
  return (jax.random.normal(kq, (b, l, h, k), dtype), jax.random.normal(kk, (b, s, g, k), dtype),
          jax.random.normal(kv, (b, s, g, k), dtype), jax.random.normal(kd, (b, l, h, k), dtype))


def _value_and_grads(fn, q, k, v, dout):
  def run(q, k, v, dout):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out,) + vjp(dout)
  return jax.jit(run)(q, k, v, dout)  # compiled: op-by-op dispatch would dominate the test


# Packed documents and padding: row 0 ends in padding, row 1 holds two documents
# whose boundary falls inside a query block.
SEGMENTS = jnp.array([[1] * 26 + [0] * 6, [1] * 11 + [2] * 21])
# Per-document positions: row 1's second document restarts at 0.
POSITIONS = jnp.array([list(range(32)), list(range(11)) + list(range(21))])


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("block", [0, 8, 16])
def test_causal_matches_reference(heads, kv_heads, block):
  q, k, v, dout = _qkv(2, 32, 32, heads, kv_heads, 8)
  mask = make_attention_mask(SEGMENTS, SEGMENTS, causal=True)
  want = _value_and_grads(lambda *a: dot_product_attention(*a, mask), q, k, v, dout)
  got = _value_and_grads(lambda *a: blocked_attention(*a, mask, causal=True, block=block),
                         q, k, v, dout)
  for name, w, g in zip(("out", "dq", "dk", "dv"), want, got):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)
  assert np.all(np.asarray(got[0])[0, 26:] == 0)  # padding rows see no key: zeros, not NaN


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("causal,block", [(True, 8), (True, 0), (False, 0)])
def test_rope_inside_matches_rotating_first(heads, kv_heads, causal, block):
  """RoPE folded into the layout copies (and its inverse into the backward's) gives the
  numbers and gradients of rotating q and k before the reference attention."""
  q, k, v, dout = _qkv(2, 32, 32, heads, kv_heads, 8, seed=3)
  mask = make_attention_mask(SEGMENTS, SEGMENTS, causal=causal)
  want = _value_and_grads(
      lambda q, k, v: dot_product_attention(apply_rope(q, POSITIONS), apply_rope(k, POSITIONS), v,
                                            mask), q, k, v, dout)
  got = _value_and_grads(
      lambda q, k, v: blocked_attention(q, k, v, mask, causal=causal, block=block,
                                        rope=rope_tables(POSITIONS, 8)), q, k, v, dout)
  for name, w, g in zip(("out", "dq", "dk", "dv"), want, got):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_fused_qkv_matches_separate(heads, kv_heads):
  """One [B, L, H + 2G, K] source gives the outputs of separate q, k, v, and its gradient
  is theirs side by side."""
  q, k, v, dout = _qkv(2, 32, 32, heads, kv_heads, 8, seed=5)
  mask = make_attention_mask(SEGMENTS, SEGMENTS, causal=True)
  rope = rope_tables(POSITIONS, 8)
  want = _value_and_grads(lambda *a: blocked_attention(*a, mask, causal=True, block=8, rope=rope),
                          q, k, v, dout)
  qkv = jnp.concatenate([q, k, v], axis=2)

  def fused(qkv, dout):
    out, vjp = jax.vjp(lambda x: blocked_self_attention(x, heads, kv_heads, mask, causal=True,
                                                        block=8, rope=rope), qkv)
    return out, vjp(dout)[0]

  out, dqkv = jax.jit(fused)(qkv, dout)
  np.testing.assert_allclose(out, want[0], atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(dqkv, jnp.concatenate(want[1:], axis=2), atol=1e-6, rtol=1e-6)
  with pytest.raises(ValueError, match="num_heads"):
    blocked_self_attention(qkv, heads + 1, kv_heads, mask)


def test_rope_inverse_undoes_rotation():
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 32, 3, 8))
  tables = rope_tables(POSITIONS, 8)
  np.testing.assert_allclose(rotate(rotate(x, *tables), *tables, inverse=True), x,
                             atol=1e-5, rtol=1e-5)


def test_rope_tables_are_computed_once():
  """The cos/sin tables are one buffer, not recomputed inside each consumer's fusion
  (what made RoPE cost about 5% of a ref_tiny step on CPU)."""
  def rotate_blocks(x, positions):
    tables = rope_tables(positions, 8)
    return [jnp.transpose(rotate(x[:, i:i + 16], tables[0][:, i:i + 16], tables[1][:, i:i + 16]),
                          perm) for i in (0, 16) for perm in ((0, 2, 1, 3), (0, 2, 3, 1))]
  x = jnp.ones((2, 32, 4, 8))
  hlo = jax.jit(rotate_blocks).lower(x, POSITIONS).compile().as_text()
  computations = re.findall(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M)
  with_cosine = [name for name, body in computations if "cosine(" in body]
  # The conditional's two (identical) branches; fused into the 4 consumers it was 4.
  assert len(with_cosine) <= 2, f"cosine computed in {with_cosine}"


@pytest.mark.parametrize("scale", [True, False])
def test_bidirectional_and_cross_attention_match_reference(scale):
  q, k, v, dout = _qkv(2, 32, 32, 4, 2, 8, seed=1)
  mask = make_attention_mask(SEGMENTS, SEGMENTS, causal=False)
  want = _value_and_grads(lambda *a: dot_product_attention(*a, mask, scale=scale), q, k, v, dout)
  got = _value_and_grads(lambda *a: blocked_attention(*a, mask, scale=scale), q, k, v, dout)
  for w, g in zip(want, got):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5)
  # cross-attention: 12 queries over 32 keys (one block whatever `causal` says: L != S)
  q, k, v, dout = _qkv(2, 12, 32, 4, 4, 8, seed=2)
  mask = make_attention_mask(jnp.ones((2, 12), jnp.int32), SEGMENTS, causal=False)
  want = _value_and_grads(lambda *a: dot_product_attention(*a, mask), q, k, v, dout)
  got = _value_and_grads(lambda *a: blocked_attention(*a, mask, causal=True, block=4), q, k, v, dout)
  for w, g in zip(want, got):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5)


def test_bfloat16_error_is_autodiffs():
  q, k, v, dout = _qkv(2, 32, 32, 4, 2, 8, seed=3)
  mask = make_attention_mask(SEGMENTS, SEGMENTS, causal=True)
  exact = _value_and_grads(lambda *a: dot_product_attention(*a, mask), q, k, v, dout)
  bf16 = [a.astype(jnp.bfloat16) for a in (q, k, v, dout)]
  ref = _value_and_grads(lambda *a: dot_product_attention(*a, mask), *bf16)
  got = _value_and_grads(lambda *a: blocked_attention(*a, mask, causal=True, block=8), *bf16)
  for e, r, g in zip(exact, ref, got):
    assert g.dtype == jnp.bfloat16
    ref_err = float(jnp.max(jnp.abs(r.astype(jnp.float32) - e)))
    got_err = float(jnp.max(jnp.abs(g.astype(jnp.float32) - e)))
    assert got_err <= 2 * ref_err + 1e-2, (got_err, ref_err)


def test_query_blocks_plan():
  assert query_blocks(256, 256, True, 64) == ((0, 64, 64), (64, 128, 128), (128, 192, 192),
                                              (192, 256, 256))
  assert query_blocks(256, 256, False, 64) == ((0, 256, 256),)  # not causal: all keys
  assert query_blocks(100, 100, True, 64) == ((0, 100, 100),)  # not a multiple of the block
  assert query_blocks(64, 64, True, 64) == ((0, 64, 64),)  # a single block
  assert query_blocks(1, 128, True, 64) == ((0, 1, 128),)  # queries against a longer key set
  assert query_blocks(256, 256, True, 0) == ((0, 256, 256),)  # 0 = one block
  long = query_blocks(2048, 2048, True, 64)  # at most MAX_QUERY_BLOCKS blocks
  assert len(long) == MAX_QUERY_BLOCKS and long[1] == (128, 256, 256)


def test_causal_blocks_skip_work():
  """Four causal blocks compile to about 5/8 of the single block's FLOPs (forward + backward)."""
  q, k, v, dout = _qkv(2, 64, 64, 2, 2, 8)
  seg = jnp.ones((2, 64), jnp.int32)
  mask = make_attention_mask(seg, seg, causal=True)

  def flops(block):
    def fn(q, k, v, dout):
      out, vjp = jax.vjp(lambda *b: blocked_attention(*b, mask, causal=True, block=block), q, k, v)
      return (out,) + vjp(dout)
    return jax.jit(fn).lower(q, k, v, dout).compile().cost_analysis()["flops"]

  assert flops(16) < 0.7 * flops(0), (flops(16), flops(0))


def _decoder(**overrides):
  cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=4, num_kv_heads=2,
                    mlp_dim=64, max_len=32, attention_block_size=8, **overrides)
  return cfg, DecoderLM(cfg)


@pytest.mark.parametrize("prefix,use_bias", [(False, False), (True, False), (False, True)],
                         ids=["causal", "prefix_lm", "biases"])
def test_decoder_blocked_equals_einsum_path(prefix, use_bias):
  """Whole-model logits and gradients (the blocked path fuses the q, k, v projections
  into one matmul, biases included); a prefix-LM mask (prefix longer than a block) must
  not be treated as causal, or the prefix tokens would lose the keys after their block."""
  cfg, model = _decoder(attention_impl="xla", use_bias=use_bias)
  blocked_cfg, blocked_model = _decoder(attention_impl="blocked", use_bias=use_bias)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 32), 0, 64)
  prefix_mask = (jnp.arange(32)[None] < jnp.array([[12], [20]])).astype(jnp.int32) if prefix else None
  params = model.init(jax.random.PRNGKey(1), tokens)["params"]

  def loss(m, p):
    logits = m.apply({"params": p}, tokens, prefix_mask_BL=prefix_mask)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  (_, want_logits), want_grads = jax.jit(jax.value_and_grad(
      lambda p: loss(model, p), has_aux=True))(params)
  (_, got_logits), got_grads = jax.jit(jax.value_and_grad(
      lambda p: loss(blocked_model, p), has_aux=True))(params)
  np.testing.assert_allclose(got_logits, want_logits, atol=1e-5, rtol=1e-5)
  for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want_grads),
                          jax.tree_util.tree_leaves(got_grads)):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_cache_decoding_unchanged():
  from lm.decode import init_cache
  cfg, model = _decoder(attention_impl="blocked")
  xla_cfg, xla_model = _decoder(attention_impl="xla")
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 8), 1, 64)
  params = model.init(jax.random.PRNGKey(1), tokens)["params"]
  # decoding with a cache takes the einsum path: the same logits as "xla"
  got, _ = jax.jit(model.apply)({"params": params}, tokens, cache=init_cache(cfg, 2, 16))
  want, _ = jax.jit(xla_model.apply)({"params": params}, tokens, cache=init_cache(xla_cfg, 2, 16))
  np.testing.assert_allclose(got, want, atol=1e-6)
