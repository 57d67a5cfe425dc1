"""Small layers with hand-written derivatives match their autodiff references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.layers import gelu_tanh


def test_gelu_tanh_matches_jax_gelu_and_its_gradient():
  x = jnp.asarray(np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 4)
  np.testing.assert_array_equal(gelu_tanh(x), jax.nn.gelu(x, approximate=True))
  weight = jnp.cos(x)  # a non-uniform cotangent
  g = jax.grad(lambda x: jnp.sum(gelu_tanh(x) * weight))(x)
  g_ref = jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=True) * weight))(x)
  np.testing.assert_allclose(g, g_ref, atol=2e-6, rtol=1e-5)


def test_gelu_tanh_keeps_bfloat16():
  x = jnp.linspace(-3, 3, 64, dtype=jnp.bfloat16)
  y, vjp = jax.vjp(gelu_tanh, x)
  (g,) = vjp(jnp.ones_like(y))
  assert y.dtype == g.dtype == jnp.bfloat16
  g_ref = jax.grad(lambda x: jnp.sum(jax.nn.gelu(x.astype(jnp.float32), approximate=True)))(x)
  np.testing.assert_allclose(g.astype(np.float32), g_ref.astype(np.float32), atol=2e-2)


def test_gelu_tanh_backward_recomputes_tanh_instead_of_keeping_it():
  """XLA would CSE a backward tanh written like the forward's and keep the forward's
  [.., F] tanh in memory (an extra fusion writing it, read back in the backward);
  the backward's differently written tanh stays its own, recomputed from x."""
  import re
  x, w = jnp.ones((64, 256)), jnp.ones((256, 256))
  loss = lambda x, w: jnp.sum(gelu_tanh(x @ w) @ w)
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  assert hlo.count(" tanh(") == 2  # once in the forward's fusion, once in the backward's
  # and never as a fusion's result of its own
  assert not re.search(r"ROOT %[\w.\-]+ = f32\[[\d,]*\]\{[\d,]*\} tanh\(", hlo)


def _layer_norm_reference(x, scale, bias, eps):
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_and_its_gradient_match_autodiff_of_the_formula(dtype):
  from lm.layers import layer_norm

  k = jax.random.split(jax.random.key(0), 4)
  x = (jax.random.normal(k[0], (3, 5, 64)) * 2 + 0.5).astype(dtype)
  scale = jax.random.normal(k[1], (64,)) + 1
  bias = jax.random.normal(k[2], (64,))
  g = jax.random.normal(k[3], (3, 5, 64))

  def loss(fn):
    return lambda x, s, b: jnp.sum(fn(x, s, b, 1e-6) * g)

  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(layer_norm(x, scale, bias, 1e-6),
                             _layer_norm_reference(x, scale, bias, 1e-6), **tol)
  new = jax.jit(jax.grad(loss(layer_norm), argnums=(0, 1, 2)))(x, scale, bias)
  ref = jax.jit(jax.grad(loss(_layer_norm_reference), argnums=(0, 1, 2)))(x, scale, bias)
  for a, b, name in zip(new, ref, ("dx", "dscale", "dbias")):
    assert a.dtype == b.dtype, name
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               err_msg=name, **tol)


def test_layer_norm_is_exact_at_a_large_mean():
  """Two-pass statistics: a row at 1e4 +- 1 normalises like float64 (one-pass E[x^2] - mean^2
  would lose most digits)."""
  from lm.layers import layer_norm

  x = 1e4 + np.random.default_rng(0).standard_normal((4, 256))
  expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
  got = jax.jit(layer_norm, static_argnums=3)(jnp.asarray(x, jnp.float32), jnp.ones(256),
                                              jnp.zeros(256), 1e-6)
  np.testing.assert_allclose(got, expected, atol=2e-3)
