"""Train state, step functions and the training loop, callable as a library.

`train(cfg, workdir)` runs one configured job end to end: validate, build data,
initialise sharded parameters under `jax.jit`, resume from the newest checkpoint
in WORKDIR if there is one, then train, evaluate, log and checkpoint. Nothing
here parses flags or prints; `progress` receives every logged record.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lm import sharding
from lm.checkpoint import Checkpointer
from lm.config import ConfigError, ModelConfig, validate
from lm.metrics import MetricsWriter, flops_per_token
from lm.models import DecoderLM
from lm.workdir import check_existing_config, write_run_files

log = logging.getLogger(__name__)
BATCH_KEYS = ("inputs", "targets", "segment_ids", "positions", "weights")


class TrainingDiverged(RuntimeError):
  """The loss became NaN or Inf; the last good checkpoint is kept."""


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


def token_losses(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood in nats, computed in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32), targets_BL)


def _apply(model, params, batch, *, deterministic: bool, dropout_rng=None):
  rngs = None if deterministic else {"dropout": dropout_rng}
  return model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"],
                     deterministic=deterministic, rngs=rngs)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    seed: int) -> Callable:
  dropout_key = jax.random.key(seed + 1)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(dropout_key, state.step)
    weights = batch["weights"]
    num_tokens = jnp.maximum(weights.sum(), 1.0)

    def loss_fn(params):
      logits = _apply(model, params, batch, deterministic=model.cfg.dropout_rate == 0, dropout_rng=rng)
      return (token_losses(logits, batch["targets"]) * weights).sum() / num_tokens

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.global_norm(grads),
        "param_norm": optax.global_norm(params),
        "learning_rate": schedule(state.step),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model: nn.Module, token_bytes: np.ndarray) -> Callable:
  """Sums over one batch: nats, target tokens, and the bytes those tokens decode to."""
  token_bytes = jnp.asarray(token_bytes, jnp.float32)

  def eval_step(params: Any, batch: dict) -> dict:
    logits = _apply(model, params, batch, deterministic=True)
    w = batch["weights"]
    nll = token_losses(logits, batch["targets"])
    return {"nll": (nll * w).sum(), "tokens": w.sum(), "bytes": (token_bytes[batch["targets"]] * w).sum()}

  return eval_step


@dataclasses.dataclass
class Initialised:
  state: TrainState
  shardings: TrainState
  num_params: int


def init_train_state(model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                     rules: Sequence, seq_len: int, seed: int) -> Initialised:
  """Parameters and optimizer state created directly in their shardings (never whole on a host)."""
  dp = sharding.data_parallel_size(mesh)
  tokens = jnp.zeros((dp, seq_len), jnp.int32)

  def boxed_params(rng):
    return model.init({"params": rng}, tokens, deterministic=True)["params"]

  rng = jax.random.key(seed)
  abstract_boxed = jax.eval_shape(boxed_params, rng)
  param_sh = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_boxed), mesh, rules)
  abstract_params = jax.tree.map(lambda b: b.unbox(apply_constraint=False), abstract_boxed,
                                 is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  repl = sharding.replicated(mesh)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
                                 transform_non_params=lambda _: repl)
  state_sh = TrainState(step=repl, params=param_sh, opt_state=opt_sh)

  def init(rng):
    params = nn.unbox(boxed_params(rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  state = jax.jit(init, out_shardings=state_sh)(rng)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params))
  return Initialised(state=state, shardings=state_sh, num_params=num_params)


def _copy_tokenizer(tokenizer, workdir: str) -> None:
  dst = os.path.join(workdir, "tokenizer.model")
  if not os.path.exists(dst):
    shutil.copyfile(tokenizer.model_path, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


def evaluate(eval_fn: Callable, params: Any, batches: list[dict], mesh) -> dict:
  """Eval loss, perplexity and bits per byte over fixed batches (one host sync)."""
  totals = None
  for b in batches:
    sums = eval_fn(params, sharding.put_batch(b, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  loss = totals["nll"] / max(totals["tokens"], 1.0)
  return {
      "loss": loss,
      "perplexity": math.exp(min(loss, 50.0)),
      "bits_per_byte": totals["nll"] / math.log(2) / max(totals["bytes"], 1.0),
      "eval_tokens": totals["tokens"],
  }


def train(cfg: ml_collections.ConfigDict, workdir: str,
          progress: Callable[[dict], None] | None = None,
          devices: Sequence[jax.Device] | None = None,
          after_step: Callable[[int], None] | None = None) -> dict:
  """Run (or resume) the configured job in WORKDIR; returns the last train and eval records.

  `after_step(step)` runs on the host after each step is dispatched (fault injection, tests).
  """
  from lm.data import build_data  # tfds imports are heavy: only when training

  devices = list(devices if devices is not None else jax.devices())
  process_index, process_count = jax.process_index(), jax.process_count()
  validate(cfg, len(devices), process_count)
  config_dict = cfg.to_dict()
  check_existing_config(workdir, config_dict)
  model_cfg = ModelConfig.from_config(cfg.model)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  rules = sharding.logical_rules(model_cfg, mesh)

  data = build_data(cfg, process_index, process_count)
  if data.tokenizer.vocab_size > model_cfg.vocab_size:
    raise ConfigError(
        f"the tokenizer has {data.tokenizer.vocab_size} tokens but model.vocab_size={model_cfg.vocab_size}; "
        f"set model.vocab_size to at least {data.tokenizer.vocab_size}.")

  is_writer = process_index == 0
  if is_writer:
    write_run_files(workdir, config_dict, mesh)
    _copy_tokenizer(data.tokenizer, workdir)
  writer = MetricsWriter(workdir, enabled=is_writer)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)

  model = DecoderLM(model_cfg)
  tx, schedule = make_optimizer(cfg.train)
  seq_len, batch_size = cfg.data.seq_len, cfg.train.batch_size
  flops_tok = flops_per_token(model_cfg, seq_len)
  tokens_per_step = batch_size * seq_len
  batch_sh = sharding.batch_sharding(mesh)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init = init_train_state(model, tx, mesh, rules, seq_len, cfg.seed)
    state, state_sh = init.state, init.shardings
    wall_offset = 0.0
    restored = ckpt.restore_latest(state)
    if restored is not None:
      start_step, state, meta = restored
      data.train.set_state(meta["data"])
      wall_offset = float(meta.get("wall_s", 0.0))
      writer.truncate_after(start_step)
    start_step = int(jax.device_get(state.step))

    step_fn = jax.jit(make_train_step(model, tx, schedule, cfg.seed),
                      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=0)
    eval_fn = jax.jit(make_eval_step(model, data.tokenizer.token_bytes()))

    t0 = time.perf_counter()
    last = {"train": None, "eval": None}

    def emit(record: dict) -> None:
      writer.write(record)
      last[record["split"]] = record
      if progress is not None:
        progress(record)

    clock = {"t": t0, "step": start_step}  # when the last fetched step was known to be done

    def flush(pending) -> None:
      step, metrics = pending
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      now = time.perf_counter()  # after the fetch: dispatch is asynchronous
      t_prev, step_prev = clock["t"], clock["step"]
      clock.update(t=now, step=step)
      if not math.isfinite(m["loss"]):
        raise TrainingDiverged(
            f"loss is {m['loss']} at step {step}; the last good checkpoint is step {ckpt.latest_step()}. "
            "Lower train.learning_rate or raise train.warmup_steps.")
      dt = max(now - t_prev, 1e-9)
      tokens = step * tokens_per_step
      emit({"step": step, "split": "train", **m, "tokens_seen": tokens, "flops_seen": tokens * flops_tok,
            "tokens_per_s": (step - step_prev) * tokens_per_step / dt, "step_time_s": dt / (step - step_prev),
            "wall_s": wall_offset + now - t0, "total_steps": cfg.train.num_steps,
            "num_params": init.num_params})

    pending = None
    for step in range(start_step, cfg.train.num_steps):
      batch = sharding.put_batch(next(data.train), mesh)
      state, metrics = step_fn(state, batch)
      done = step + 1
      if pending is not None:  # step n-1's metrics, fetched after step n was dispatched
        flush(pending)
        pending = None
      if done % cfg.train.log_every == 0 or done == cfg.train.num_steps:
        pending = (done, metrics)
      if done % cfg.train.eval_every == 0 or done == cfg.train.num_steps:
        if pending is not None:
          flush(pending)
          pending = None
        ev = evaluate(eval_fn, state.params, data.eval_batches, mesh)
        tokens = done * tokens_per_step
        emit({"step": done, "split": "eval", **ev, "tokens_seen": tokens, "flops_seen": tokens * flops_tok,
              "wall_s": wall_offset + time.perf_counter() - t0, **data.metadata})
        clock.update(t=time.perf_counter(), step=done)  # eval time is not training throughput
      if done % cfg.train.checkpoint_every == 0 or done == cfg.train.num_steps:
        if pending is not None:  # never checkpoint a diverged state
          flush(pending)
          pending = None
        ckpt.save(done, state, {"data": data.train.get_state(), "wall_s": wall_offset + time.perf_counter() - t0,
                                "model": dataclasses.asdict(model_cfg)})
      if after_step is not None:
        after_step(done)
    if pending is not None:
      flush(pending)
  ckpt.close()
  writer.close()
  return {"train": last["train"], "eval": last["eval"], "num_params": init.num_params,
          "start_step": start_step, "workdir": workdir}
