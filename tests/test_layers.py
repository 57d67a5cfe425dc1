"""Small layers with hand-written derivatives match their autodiff references."""
import jax
import jax.numpy as jnp
import numpy as np

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
