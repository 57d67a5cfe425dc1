"""The train step's non-finite guard (lm/steps.py update_if_finite) and the cross-entropy's
custom gradient (lm/objectives.py softmax_cross_entropy)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm.config import base_config
from lm.objectives import softmax_cross_entropy
from lm.steps import make_optimizer, update_if_finite


def _tree(seed):
  shapes = {"w": (16, 8), "b": (8,), "layers": {"k": (2, 8, 8)}}
  keys = iter(jax.random.split(jax.random.key(seed), 8))
  return jax.tree.map(lambda s: jax.random.normal(next(keys), s), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def _select_reference(tx, finite, grads, params, opt_state):
  updates, new_opt = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  return keep(new_params, params), keep(new_opt, opt_state)


@pytest.mark.parametrize("finite", [True, False])
def test_update_if_finite_equals_the_elementwise_select(finite):
  tx, _ = make_optimizer(base_config().train)
  params, grads = _tree(0), _tree(1)
  opt_state = tx.init(params)
  for _ in range(2):  # a second step, with non-zero moments
    params, opt_state = jax.jit(update_if_finite, static_argnums=0)(tx, jnp.bool_(True), grads, params, opt_state)
  want = jax.jit(_select_reference, static_argnums=0)(tx, jnp.bool_(finite), grads, params, opt_state)
  got = jax.jit(update_if_finite, static_argnums=0)(tx, jnp.bool_(finite), grads, params, opt_state)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)
  if not finite:  # nothing moves
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 got, (params, opt_state))


def test_the_guarded_update_does_not_copy_the_optimizer_state():
  """The element-wise select made XLA:CPU copy every moment before updating it in place."""
  tx, _ = make_optimizer(base_config().train)
  params, grads = _tree(0), _tree(1)
  opt_state = tx.init(params)
  step = jax.jit(update_if_finite, static_argnums=0, donate_argnums=(3, 4))
  hlo = step.lower(tx, jnp.bool_(True), grads, params, opt_state).compile().as_text()
  copies = re.findall(r"= f32\[[\d,]*\]\{[\d,]*\} copy\(", hlo)
  assert not copies, copies


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cross_entropy_value_and_gradient_match_optax(dtype):
  logits = (jax.random.normal(jax.random.key(0), (3, 5, 37)) * 4).astype(dtype)
  targets = jax.random.randint(jax.random.key(1), (3, 5), 0, 37)
  weights = jax.random.uniform(jax.random.key(2), (3, 5))

  def ours(x):
    return (softmax_cross_entropy(x, targets) * weights).sum()

  def reference(x):
    return (optax.softmax_cross_entropy_with_integer_labels(x.astype(jnp.float32), targets) * weights).sum()

  (v, g), (rv, rg) = jax.value_and_grad(ours)(logits), jax.value_and_grad(reference)(logits)
  assert g.dtype == dtype
  tol = 1e-6 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(v, rv, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(rg, np.float32), atol=tol)


def test_cross_entropy_is_stable_for_large_logits():
  logits = jnp.array([[1e4, 0.0, -1e4], [-3e4, -3e4, -3e4]])
  targets = jnp.array([0, 2])
  losses = softmax_cross_entropy(logits, targets)
  np.testing.assert_allclose(losses, [0.0, np.log(3.0)], rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(jax.grad(lambda x: softmax_cross_entropy(x, targets).sum())(logits)))
