"""The fused CPU attention kernel (lm/cpu_attention.py, lm/kernels/attention.cc).

It must give `dot_product_attention`'s outputs and gradients for every mask the
models build (padding, packed segments, causal, bidirectional, rows that see no
key), with GQA/MQA and RoPE; the same numbers under a device mesh as on one device;
and fall back to the blocked path outside its scope or without a compiler.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lm import cpu_attention
from lm.attention import attention_backend, dot_product_attention, make_attention_mask
from lm.blocked_attention import blocked_self_attention
from lm.config import ModelConfig
from lm.kernels import build
from lm.models import DecoderLM
from lm.rope import apply_rope, rope_tables

if cpu_attention.unavailable_reason() is not None:
  pytest.skip(f"no fused CPU attention here: {cpu_attention.unavailable_reason()}",
              allow_module_level=True)

# Row 0 ends in padding; row 1 holds two documents whose boundary falls inside a
# 16-row panel of the kernel; row 2 is one document.
SEGMENTS = jnp.array([[1] * 26 + [0] * 6, [1] * 11 + [2] * 21, [1] * 32])
POSITIONS = jnp.array([list(range(32)), list(range(11)) + list(range(21)), list(range(32))])
K = 16


def _inputs(heads, kv_heads, seed=0):
  kx, kd = jax.random.split(jax.random.PRNGKey(seed))
  qkv = jax.random.normal(kx, (3, 32, heads + 2 * kv_heads, K), jnp.float32)
  dout = jax.random.normal(kd, (3, 32, heads, K), jnp.float32)
  return qkv, dout


def _reference(qkv, heads, kv_heads, mask, rope, scale):
  q, k, v = jnp.split(qkv, [heads, heads + kv_heads], axis=2)
  if rope:
    q, k = apply_rope(q, POSITIONS), apply_rope(k, POSITIONS)
  return dot_product_attention(q, k, v, mask, scale=scale)


def _value_and_grad(fn, qkv, dout):
  def run(qkv, dout):
    out, vjp = jax.vjp(fn, qkv)
    return out, vjp(dout)[0]
  return jax.jit(run)(qkv, dout)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("rope", [True, False], ids=["rope", "no_rope"])
def test_matches_reference(heads, kv_heads, causal, rope):
  qkv, dout = _inputs(heads, kv_heads)
  mask = make_attention_mask(SEGMENTS, SEGMENTS, causal=causal)
  tables = rope_tables(POSITIONS, K) if rope else None
  want = _value_and_grad(lambda x: _reference(x, heads, kv_heads, mask, rope, True), qkv, dout)
  got = _value_and_grad(lambda x: cpu_attention.fused_self_attention(
      x, heads, kv_heads, mask, causal=causal, rope=tables), qkv, dout)
  for name, w, g in zip(("out", "dqkv"), want, got):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)
  out = np.asarray(got[0])
  assert np.all(out[0, 26:] == 0)  # padding rows see no key: zeros, not NaN
  assert np.all(np.asarray(got[1])[0, 26:, :heads] == 0)


@pytest.mark.parametrize("heads,kv_heads,per_item", [(4, 2, 2), (6, 3, 3), (4, 4, 2), (4, 2, 0)],
                         ids=["gqa_rows", "gqa3_rows", "mha_half_rows", "auto"])
def test_work_items_match_reference(heads, kv_heads, per_item, monkeypatch):
  """Work items of whole batch rows (every kv head and its query heads), of parts of
  rows, and the kernel's own choice give the same numbers."""
  monkeypatch.setattr(cpu_attention, "KV_HEADS_PER_ITEM", per_item)
  qkv = jax.random.normal(jax.random.PRNGKey(6), (16, 32, heads + 2 * kv_heads, K), jnp.float32)
  dout = jax.random.normal(jax.random.PRNGKey(7), (16, 32, heads, K), jnp.float32)
  seg = jnp.tile(SEGMENTS, (6, 1))[:16]
  pos = jnp.tile(POSITIONS, (6, 1))[:16]
  mask, rope = make_attention_mask(seg, seg, causal=True), rope_tables(pos, K)

  def reference(x):
    q, k, v = jnp.split(x, [heads, heads + kv_heads], axis=2)
    return dot_product_attention(apply_rope(q, pos), apply_rope(k, pos), v, mask)

  want = _value_and_grad(reference, qkv, dout)
  got = _value_and_grad(lambda x: cpu_attention.fused_self_attention(
      x, heads, kv_heads, mask, causal=True, rope=rope), qkv, dout)
  for name, w, g in zip(("out", "dqkv"), want, got):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)


def test_unscaled_and_no_mask():
  qkv, dout = _inputs(2, 1, seed=1)
  want = _value_and_grad(lambda x: _reference(x, 2, 1, None, False, False), qkv, dout)
  got = _value_and_grad(lambda x: cpu_attention.fused_self_attention(x, 2, 1, None, scale=False),
                        qkv, dout)
  for name, w, g in zip(("out", "dqkv"), want, got):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5, err_msg=name)


def test_long_rows_match_blocked_path():
  """Two 64-key causal rows per panel and softmax inputs far from zero: the kernel's
  exp and its causal key prefixes against the blocked path at a ref_tiny-like shape."""
  qkv = 3.0 * jax.random.normal(jax.random.PRNGKey(2), (2, 128, 6, 64), jnp.float32)
  dout = jax.random.normal(jax.random.PRNGKey(3), (2, 128, 4, 64), jnp.float32)
  seg = jnp.ones((2, 128), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(128), (2, 128))
  mask, rope = make_attention_mask(seg, seg, causal=True), rope_tables(pos, 64)
  want = _value_and_grad(lambda x: blocked_self_attention(x, 4, 1, mask, causal=True, rope=rope),
                         qkv, dout)
  got = _value_and_grad(lambda x: cpu_attention.fused_self_attention(
      x, 4, 1, mask, causal=True, rope=rope), qkv, dout)
  for name, w, g in zip(("out", "dqkv"), want, got):
    np.testing.assert_allclose(g, w, atol=5e-5, rtol=5e-5, err_msg=name)


def test_bad_head_count_is_a_clear_error():
  qkv, _ = _inputs(4, 2)
  with pytest.raises(ValueError, match="num_heads"):
    cpu_attention.fused_self_attention(qkv, 4, 1, None)


def test_sharded_over_batch_equals_one_device():
  """Under a mesh the kernel runs per batch shard (shard_map): the numbers of one device,
  and no all-gather of the activations."""
  qkv, dout = _inputs(4, 2, seed=4)
  qkv, dout = jnp.tile(qkv, (8, 1, 1, 1))[:8], jnp.tile(dout, (8, 1, 1, 1))[:8]
  seg = jnp.tile(SEGMENTS, (3, 1))[:8]
  pos = jnp.tile(POSITIONS, (3, 1))[:8]
  mask, rope = make_attention_mask(seg, seg, causal=True), rope_tables(pos, K)
  fn = lambda x, m, c, s: cpu_attention.fused_self_attention(x, 4, 2, m, causal=True, rope=(c, s))
  want = _value_and_grad(lambda x: fn(x, mask, *rope), qkv, dout)

  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
  with jax.set_mesh(mesh), nn.logical_axis_rules((("batch", "data"),)):
    run = jax.jit(lambda x, d, m, c, s: jax.vjp(lambda y: fn(y, m, c, s), x)[1](d)[0])
    args = [shard(a) for a in (qkv, dout, mask, *rope)]
    hlo = run.lower(*args).compile().as_text()
    got_grad = run(*args)
    got_out = jax.jit(fn)(*[args[0], *args[2:]])
  assert "all-gather" not in hlo
  np.testing.assert_allclose(got_out, want[0], atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(got_grad, want[1], atol=1e-6, rtol=1e-6)


def _decoder(**overrides):
  cfg = ModelConfig(vocab_size=64, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    mlp_dim=64, max_len=32, **overrides)
  return cfg, DecoderLM(cfg)


@pytest.mark.parametrize("prefix,use_bias", [(False, False), (True, False), (False, True)],
                         ids=["causal", "prefix_lm", "biases"])
def test_decoder_fused_equals_einsum_path(prefix, use_bias):
  """Whole-model logits and gradients; a prefix-LM mask must not be treated as causal."""
  _, model = _decoder(attention_impl="xla", use_bias=use_bias)
  _, fused_model = _decoder(attention_impl="cpu_fused", use_bias=use_bias)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 32), 0, 64)
  prefix_mask = None
  if prefix:
    prefix_mask = (jnp.arange(32)[None] < jnp.array([[12], [20]])).astype(jnp.int32)
  params = model.init(jax.random.PRNGKey(1), tokens)["params"]

  def loss(m, p):
    logits = m.apply({"params": p}, tokens, prefix_mask_BL=prefix_mask)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

  (_, want_logits), want_grads = jax.jit(jax.value_and_grad(
      lambda p: loss(model, p), has_aux=True))(params)
  fused = jax.jit(jax.value_and_grad(lambda p: loss(fused_model, p), has_aux=True))
  assert "lm_attention_backward" in fused.lower(params).as_text()
  (_, got_logits), got_grads = fused(params)
  np.testing.assert_allclose(got_logits, want_logits, atol=1e-5, rtol=1e-5)
  for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want_grads),
                          jax.tree_util.tree_leaves(got_grads)):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("overrides,length", [({"dtype": "bfloat16"}, 32), ({}, 24)],
                         ids=["bfloat16", "length_24"])
def test_out_of_scope_calls_take_the_blocked_path(overrides, length):
  cfg, model = _decoder(attention_impl="cpu_fused", **overrides)
  _, blocked = _decoder(attention_impl="blocked", **overrides)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, length), 0, 64)
  params = model.init(jax.random.PRNGKey(1), tokens)["params"]
  apply = jax.jit(model.apply)
  assert "lm_attention" not in apply.lower({"params": params}, tokens).as_text()
  np.testing.assert_array_equal(apply({"params": params}, tokens),
                                jax.jit(blocked.apply)({"params": params}, tokens))


def test_auto_takes_the_kernel_on_cpu():
  assert attention_backend("auto", jnp.float32) == "cpu_fused"  # tests run on CPU


def test_build_is_cached_and_keyed(tmp_path, monkeypatch):
  monkeypatch.setenv("LM_KERNEL_CACHE", str(tmp_path))
  first = build.build.__wrapped__("attention.cc")
  assert first.parent == tmp_path and first.exists()
  mtime = first.stat().st_mtime_ns
  assert build.build.__wrapped__("attention.cc") == first  # cached: not compiled again
  assert first.stat().st_mtime_ns == mtime
  assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setenv("LM_KERNEL_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.raises(build.KernelBuildError, match="no-such-compiler"):
    build.build.__wrapped__("attention.cc")


def test_explicit_kernel_without_compiler_fails_before_compute(monkeypatch):
  from lm.config import ConfigError, base_config
  from lm.train import setup_run
  monkeypatch.setattr(cpu_attention, "unavailable_reason", lambda: "no C++ compiler found")
  cfg = base_config()
  cfg.model.attention_impl = "cpu_fused"
  with pytest.raises(ConfigError, match="attention_impl='cpu_fused'.*no C.. compiler.*'blocked'"):
    setup_run(cfg, jax.devices()[:1])
  assert attention_backend("auto", jnp.float32) == "blocked"


@pytest.mark.slow
def test_training_on_eight_devices_equals_one(tmp_path, monkeypatch):
  """The train loop with the kernel (head dim 16) on a data x fsdp x tensor mesh: the
  losses of one device. The kernel runs per batch shard; the tensor axis's heads are
  gathered for it."""
  from lm.train import train
  from tests.helpers import losses, tiny_config
  calls = []
  traced = cpu_attention.fused_self_attention
  monkeypatch.setattr(cpu_attention, "fused_self_attention",
                      lambda *a, **k: calls.append(a[0].shape) or traced(*a, **k))
  overrides = {"model.head_dim": 16, "model.attention_impl": "cpu_fused"}
  data_dir = str(tmp_path / "data")
  train(tiny_config(data_dir, **overrides, **{"mesh.data": 1}), str(tmp_path / "one"),
        devices=jax.devices()[:1])
  mesh = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
  train(tiny_config(data_dir, **overrides, **mesh), str(tmp_path / "eight"),
        devices=jax.devices()[:8])
  assert calls  # the kernel ran, not the blocked path
  a, b = losses(str(tmp_path / "one")), losses(str(tmp_path / "eight"))
  assert [s for s, _ in a] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([l for _, l in a], [l for _, l in b], rtol=2e-5)


@pytest.mark.parametrize("policy", ["full", "dots_saveable", "save_attention_out"])
def test_remat_policies_give_the_same_gradients(policy):
  """Rematerialisation runs the kernel's forward again inside the backward: the same
  gradients as saving everything."""
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 32), 0, 64)

  def grads(remat_policy):
    _, model = _decoder(attention_impl="cpu_fused", remat_policy=remat_policy)
    params = model.init(jax.random.PRNGKey(1), tokens)["params"]
    step = jax.jit(jax.grad(lambda p: jnp.mean(model.apply({"params": p}, tokens) ** 2)))
    assert "lm_attention_backward" in step.lower(params).as_text()
    return step(params)

  want, got = grads("none"), grads(policy)
  for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want),
                          jax.tree_util.tree_leaves(got)):
    np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
