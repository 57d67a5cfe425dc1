"""Jitted step bodies: the train step (gradient accumulation, non-finite guard) and the eval step.

The bodies are pure functions of (state, batch); `lm/train.py` jits them with
shardings and donation. An objective (lm/objectives.py) supplies the loss.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lm.transformer import unstack_layer_params


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def make_optimizer(train_cfg: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warmup then cosine decay, global-norm clipping, no decay on vectors."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.learning_rate, warmup_steps=train_cfg.warmup_steps,
      decay_steps=max(train_cfg.num_steps, train_cfg.warmup_steps + 1),
      end_value=train_cfg.learning_rate * train_cfg.min_lr_ratio)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  parts = []
  if train_cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(train_cfg.grad_clip))
  parts.append(optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2,
                           weight_decay=train_cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule


def update_if_finite(tx: optax.GradientTransformation, finite: jax.Array, grads: Any, params: Any,
                     opt_state: Any) -> tuple[Any, Any]:
  """(params, opt_state) after tx's update where `finite`, else the inputs unchanged.

  On CPU a conditional: selecting between the new and the old state element-wise
  makes XLA:CPU recompute the new moments inside the params' update and so copy
  every old moment first (ref_tiny: 22 copies, about 5 ms of a 330 ms step). Inside
  a conditional each buffer is updated in place. Elsewhere the element-wise select
  (a conditional on GPU waits for its predicate on the host).
  """
  def update(params, opt_state, grads):
    updates, new_opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_opt_state

  if jax.default_backend() == "cpu":
    return jax.lax.cond(finite, update, lambda p, o, g: (p, o), params, opt_state, grads)
  new_params, new_opt_state = update(params, opt_state, grads)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  return keep(new_params, params), keep(new_opt_state, opt_state)


def _split_microbatches(batch: dict, k: int) -> dict:
  """[B, ...] -> [k, B/k, ...] with microbatch j = rows j, j+k, ...: every device keeps its rows."""
  def split(x):
    b = x.shape[0]
    x = x.reshape((b // k, k) + x.shape[1:]).swapaxes(0, 1)
    names = (None, "batch") + (None,) * (x.ndim - 2)
    return nn.with_logical_constraint(x, names)
  return jax.tree.map(split, batch)


def layer_norms(tree: Any, num_layers: int, scanned: bool, prefix: str) -> dict[str, jax.Array]:
  """Global norm of each layer's subtree (`decoder/layers_i` after unstacking)."""
  if scanned:
    tree = unstack_layer_params(tree, num_layers)
  out = {}
  def visit(d, path):
    for key, value in d.items():
      if key.startswith("layers_") and isinstance(value, dict):
        out[f"{prefix}/{path}{key}"] = optax.global_norm(value)
      elif isinstance(value, dict):
        visit(value, f"{path}{key}/")
  visit(tree, "")
  return out


def make_train_step(objective, model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, train_cfg: Any, seed: int) -> Callable:
  """state, batch -> state, metrics. A non-finite loss or gradient leaves the state as it was."""
  dropout_key = jax.random.key(seed + 1)
  accum = int(train_cfg.grad_accum_steps)
  deterministic = model.cfg.dropout_rate == 0
  nan_step = int(train_cfg.debug_nan_step)

  def loss_fn(params, batch, rng, num_tokens):
    return objective.loss(model, params, batch, deterministic=deterministic, rng=rng, num_tokens=num_tokens)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(dropout_key, state.step)
    if accum == 1:
      (loss, aux), grads = grad_fn(state.params, batch, rng, None)
    else:
      # Each microbatch loss is normalised by the whole batch's count, so they sum to the full loss.
      normalizer = getattr(objective, "loss_normalizer", None)
      num_tokens = normalizer(batch) if normalizer is not None else None
      micro = _split_microbatches(batch, accum)
      zeros = jax.tree.map(jnp.zeros_like, state.params)

      def body(carry, xs):
        g_sum, l_sum, a_sum = carry
        mb, i = xs
        (l, a), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i), num_tokens)
        if num_tokens is None:  # objectives without token weights average per microbatch
          l, g = l / accum, jax.tree.map(lambda x: x / accum, g)
        a = jax.tree.map(lambda x: x / accum, a)
        return (jax.tree.map(jnp.add, g_sum, g), l_sum + l, jax.tree.map(jnp.add, a_sum, a)), None

      aux0 = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: grad_fn(
          state.params, jax.tree.map(lambda x: x[0], micro), rng, num_tokens)[0][1]))
      (grads, loss, aux), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32), aux0),
                                           (micro, jnp.arange(accum)))
    if nan_step >= 0:  # fault injection (tests): a NaN appears in the loss and gradient
      poison = jnp.where(state.step + 1 == nan_step, jnp.nan, 1.0)
      loss, grads = loss * poison, jax.tree.map(lambda g: g * poison, grads)

    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = update_if_finite(tx, finite, grads, state.params, state.opt_state)
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "param_norm": optax.global_norm(params),
        "learning_rate": schedule(state.step),
        "nonfinite": (~finite).astype(jnp.float32),
        **aux,
    }
    if train_cfg.log_layer_norms:
      cfg = model.cfg
      metrics.update(layer_norms(params, cfg.num_layers, cfg.scan_layers, "param_norm"))
      metrics.update(layer_norms(grads, cfg.num_layers, cfg.scan_layers, "grad_norm"))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(objective, model: nn.Module, token_bytes) -> Callable:
  token_bytes = jnp.asarray(token_bytes, jnp.float32)

  def eval_step(params: Any, batch: dict) -> dict:
    return objective.eval_sums(model, params, batch, token_bytes)

  return eval_step


def track_nonfinite(first_bad: jax.Array, count: jax.Array, metrics: dict, step: int):
  """Device-side record of the first non-finite step and how many there were (no host sync)."""
  bad = metrics["nonfinite"] > 0
  first_bad = jnp.where((first_bad < 0) & bad, step, first_bad)
  return first_bad, count + bad.astype(jnp.int32)
