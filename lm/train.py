"""The training loop, callable as a library.

`train(cfg, workdir)` runs one configured job end to end: validate, build data,
initialise sharded parameters under `jax.jit`, resume from the newest readable
checkpoint in WORKDIR, then train, evaluate, log and checkpoint. Nothing here
parses flags or prints; `progress` receives every logged record.

Host habits: the step is dispatched before step n-1's metrics are fetched, so
the host never waits on the device inside the loop except at log, eval and
checkpoint points.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lm import cpu_attention, layout, sharding, warm_start
from lm.checkpoint import Checkpointer
from lm import compile_options
from lm.compile_options import model_compiler_options
from lm.config import ConfigError, ModelConfig, config_diff, validate, with_model_defaults
from lm.metrics import MetricsWriter, peak_flops, step_cost
from lm.objectives import get_objective
from lm.steps import TrainState, make_eval_step, make_optimizer, make_train_step, track_nonfinite
from lm.workdir import check_existing_config, write_run_files

log = logging.getLogger(__name__)

# Model fields that may differ between a checkpoint and the model restoring it.
LAYOUT_ONLY_MODEL_FIELDS = frozenset({"scan_layers", "scan_unroll", "attention_impl",
                                      "attention_block_size", "weight_grad_impl", "matmul_library",
                                      "remat_policy", "dtype"})


class TrainingDiverged(RuntimeError):
  """The loss or gradient became NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class RunSetup:
  """What every entry point (train, dry run, benchmark) derives from a config and devices."""
  objective: Any
  model_cfg: ModelConfig
  mesh: jax.sharding.Mesh
  rules: tuple
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule


def setup_run(cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device]) -> RunSetup:
  """Validate the config for these devices and build mesh, rules, model and optimizer (no compute)."""
  validate(cfg, len(devices), jax.process_count())
  if cfg.model.attention_impl == "cudnn" and devices[0].platform != "gpu":
    raise ConfigError(f"model.attention_impl='cudnn' needs NVIDIA GPUs, but the devices are "
                      f"{devices[0].platform}; use 'auto' (cuDNN where it applies) or 'xla'.")
  if cfg.model.attention_impl == "cpu_fused":
    reason = (f"the devices are {devices[0].platform}" if devices[0].platform != "cpu"
              else cpu_attention.unavailable_reason())
    if reason:
      raise ConfigError(f"model.attention_impl='cpu_fused' cannot run: {reason}; use 'auto' "
                        f"(the fused kernel where it applies) or 'blocked'.")
  objective = get_objective(cfg.objective, cfg)
  model_cfg = ModelConfig.from_config(cfg.model)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  tx, schedule = make_optimizer(cfg.train)
  return RunSetup(objective, model_cfg, mesh, sharding.logical_rules(model_cfg, mesh),
                  objective.make_model(model_cfg), tx, schedule)


@dataclasses.dataclass
class Initialised:
  state: TrainState
  shardings: TrainState
  num_params: int


def abstract_train_state(objective, model, tx, mesh, rules, seq_len: int, seed: int):
  """(abstract state, state shardings, abstract boxed params) without allocating anything."""
  batch = objective.init_batch(sharding.data_parallel_size(mesh), seq_len)
  rng = jax.random.key(seed)
  boxed = lambda r: objective.init_params(model, r, batch)
  abstract_boxed = jax.eval_shape(boxed, rng)
  param_sh = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_boxed), mesh, rules)
  abstract_params = jax.tree.map(lambda b: b.unbox(apply_constraint=False), abstract_boxed,
                                 is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  repl = sharding.replicated(mesh)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh, transform_non_params=lambda _: repl)
  state_sh = TrainState(step=repl, params=param_sh, opt_state=opt_sh)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
  return abstract, state_sh, (boxed, rng)


def init_train_state(objective, model, tx, mesh, rules, seq_len: int, seed: int) -> Initialised:
  """Parameters and optimizer state created directly in their shardings (never whole on a host)."""
  abstract, state_sh, (boxed, rng) = abstract_train_state(objective, model, tx, mesh, rules, seq_len, seed)

  def init(r):
    params = nn.unbox(boxed(r))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  state = jax.jit(init, out_shardings=state_sh)(rng)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  return Initialised(state=state, shardings=state_sh, num_params=num_params)


def check_checkpoint_model(meta: dict, model_cfg: ModelConfig, where: str) -> None:
  """Refuse a checkpoint of another model, listing the fields that differ."""
  saved = meta.get("model")
  if saved is None:
    return
  saved = with_model_defaults(saved)
  diff = {k: v for k, v in config_diff(saved, dataclasses.asdict(model_cfg)).items()
          if k not in LAYOUT_ONLY_MODEL_FIELDS}
  if diff:
    lines = "\n".join(f"  model.{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff.items())
    raise ConfigError(f"the checkpoint in {where} is of a different model:\n{lines}\n"
                      "Use the checkpoint's model config, or a new --workdir.")


def restore_checkpoint(ckpt: Checkpointer, state: TrainState, model_cfg: ModelConfig):
  """Newest readable checkpoint onto `state`'s shardings, in this model's layer layout.

  A step that cannot be read (partial copy, corrupt file) is skipped with a warning.
  """
  target = layout.storage_abstract(jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state),
      model_cfg.scan_layers, model_cfg.num_layers)
  for step in reversed(ckpt.all_steps()):
    try:
      meta = ckpt.read_meta(step)
    except Exception as e:  # unreadable metadata: treat like a corrupt step
      log.warning("checkpoint step %d has unreadable metadata (%s); moved to %s; trying the previous one",
                  step, e, ckpt.quarantine(step))
      continue
    check_checkpoint_model(meta, model_cfg, ckpt.directory)
    try:
      stored, meta = ckpt.restore(step, target)
    except Exception as e:
      log.warning("checkpoint step %d could not be restored (%s: %s); moved to %s; trying the previous one",
                  step, type(e).__name__, str(e)[:300], ckpt.quarantine(step))
      continue
    restored = layout.from_storage(stored, model_cfg.scan_layers, model_cfg.num_layers)
    return step, layout.place_like(restored, state), meta
  return None


def resolve_init_from(path: str) -> tuple[str, int]:
  """`WORKDIR` (newest step) or `WORKDIR/checkpoints/<step>` -> (checkpoints dir, step)."""
  path = os.path.abspath(path)
  base = os.path.basename(path)
  if base.isdigit() and os.path.isdir(path):
    return os.path.dirname(path), int(base)
  ckpt_dir = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
  steps = Checkpointer(ckpt_dir).all_steps() if os.path.isdir(ckpt_dir) else []
  if not steps:
    raise ConfigError(f"train.init_from={path!r} holds no checkpoint: give a WORKDIR of a finished run "
                      "or WORKDIR/checkpoints/<step>.")
  return ckpt_dir, steps[-1]


def load_init_params(path: str, state: TrainState, model_cfg: ModelConfig) -> TrainState:
  """Replace the params of `state` by those of another run's checkpoint (optimizer state stays fresh)."""
  ckpt_dir, step = resolve_init_from(path)
  source = Checkpointer(ckpt_dir)
  check_checkpoint_model(source.read_meta(step), model_cfg, f"train.init_from ({ckpt_dir}/{step})")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.params)
  stored = source.restore_params(step, layout.storage_abstract(abstract, model_cfg.scan_layers, model_cfg.num_layers))
  params = layout.place_like(layout.from_storage(stored, model_cfg.scan_layers, model_cfg.num_layers), state.params)
  return state.replace(params=params)


def _copy_tokenizer(tokenizer, workdir: str) -> None:
  if os.path.isdir(tokenizer.model_path):  # an imported HF tokenizer (lm/interop) and its HF config
    src = os.path.dirname(tokenizer.model_path)
    for name in ("tokenizer", "hf_config.json"):
      if os.path.exists(os.path.join(src, name)) and not os.path.exists(os.path.join(workdir, name)):
        (shutil.copytree if name == "tokenizer" else shutil.copyfile)(
            os.path.join(src, name), os.path.join(workdir, name))
    return
  dst = os.path.join(workdir, "tokenizer.model")
  if not os.path.exists(dst):
    shutil.copyfile(tokenizer.model_path, dst + ".tmp")
    os.replace(dst + ".tmp", dst)


def evaluate(objective, eval_fn: Callable, params: Any, batches: list[dict], mesh) -> dict:
  """Eval metrics over fixed batches (one host sync at the end)."""
  totals = None
  for b in batches:
    sums = eval_fn(params, sharding.put_batch(b, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    return {}
  return objective.eval_metrics({k: float(v) for k, v in jax.device_get(totals).items()})


class RowSlice:
  """This process's rows of a global-batch loader (resumable like the loader it wraps)."""

  def __init__(self, loader, process_index: int, process_count: int):
    self.loader, self.index, self.count = loader, process_index, process_count

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return slice_rows(next(self.loader), self.index, self.count)

  def get_state(self) -> dict:
    return self.loader.get_state()

  def set_state(self, state: dict) -> None:
    self.loader.set_state(state)


def slice_rows(batch: dict, index: int, count: int) -> dict:
  n = next(iter(batch.values())).shape[0] // count
  return {k: v[index * n:(index + 1) * n] for k, v in batch.items()}


def _build_process_data(build_data, cfg, process_index: int, process_count: int):
  mode = cfg.data.process_sharding
  if mode == "documents" or process_count == 1:
    return build_data(cfg, process_index, process_count)
  if mode != "rows":
    raise ConfigError(f"data.process_sharding={mode!r} is not one of: rows, documents.")
  data = build_data(cfg, 0, 1)
  data.train = RowSlice(data.train, process_index, process_count)
  data.eval_batches = [slice_rows(b, process_index, process_count) for b in data.eval_batches]
  return data


class _Preemption:
  """SIGTERM sets a flag; the loop checkpoints and returns at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train(cfg: ml_collections.ConfigDict, workdir: str,
          progress: Callable[[dict], None] | None = None,
          devices: Sequence[jax.Device] | None = None,
          after_step: Callable[[int], None] | None = None,
          profile_steps: tuple[int, int] | None = None) -> dict:
  """Run (or resume) the configured job in WORKDIR; returns a summary with the last records.

  `after_step(step)` runs on the host after each step is dispatched (fault injection, tests).
  `profile_steps=(a, b)` writes a jax.profiler trace of steps a..b-1 to WORKDIR/profile.
  On SIGTERM the run saves a checkpoint and returns with summary["preempted"] = True.
  """
  from lm.data import build_data  # tfds imports are heavy: only when training

  devices = list(devices if devices is not None else jax.devices())
  process_index, process_count = jax.process_index(), jax.process_count()
  run = setup_run(cfg, devices)
  objective, model_cfg, mesh, rules, model, tx, schedule = (
      run.objective, run.model_cfg, run.mesh, run.rules, run.model, run.tx, run.schedule)
  config_dict = cfg.to_dict()
  check_existing_config(workdir, config_dict)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpt_dir):  # refuse another model's checkpoints before building anything
    ckpt_probe = Checkpointer(ckpt_dir, keep=cfg.train.keep_checkpoints)
    if ckpt_probe.latest_step() is not None:
      check_checkpoint_model(ckpt_probe.read_meta(ckpt_probe.latest_step()), model_cfg, ckpt_dir)

  if cfg.train.init_from:  # refuse another model's params before building anything
    src_dir, src_step = resolve_init_from(cfg.train.init_from)
    if cfg.train.init_from_params not in warm_start.MODES:
      raise ConfigError(f"train.init_from_params={cfg.train.init_from_params!r} is not one of: "
                        f"{', '.join(warm_start.MODES)}.")
    if cfg.train.init_from_params == "all":
      check_checkpoint_model(Checkpointer(src_dir).read_meta(src_step), model_cfg,
                             f"train.init_from ({src_dir}/{src_step})")
    else:  # names and shapes from metadata and eval_shape: nothing is allocated or written yet
      abstract = abstract_train_state(run.objective, run.model, run.tx, mesh, run.rules,
                                      cfg.data.seq_len, cfg.seed)[0].params
      stored = layout.storage_abstract(abstract, model_cfg.scan_layers, model_cfg.num_layers)
      warm_start.check_plan(src_dir, src_step, {p: a.shape for p, a in warm_start.flatten(stored).items()})
  data = _build_process_data(build_data, cfg, process_index, process_count)
  if data.tokenizer.vocab_size > model_cfg.vocab_size:
    raise ConfigError(
        f"the tokenizer has {data.tokenizer.vocab_size} tokens but model.vocab_size={model_cfg.vocab_size}; "
        f"set model.vocab_size to at least {data.tokenizer.vocab_size}.")

  is_writer = process_index == 0
  if is_writer:
    write_run_files(workdir, config_dict, mesh)
    _copy_tokenizer(data.tokenizer, workdir)
  writer = MetricsWriter(workdir, enabled=is_writer)
  ckpt = Checkpointer(ckpt_dir, keep=cfg.train.keep_checkpoints)

  seq_len = cfg.data.seq_len
  peak, peak_source = peak_flops(devices, cfg.train.peak_flops_per_device)
  batch_sh = sharding.batch_sharding(mesh)
  policy = cfg.train.nonfinite
  if policy not in ("stop", "skip"):
    raise ConfigError(f"train.nonfinite={policy!r} is not one of: stop, skip.")

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), _Preemption() as preemption:
    init = init_train_state(objective, model, tx, mesh, rules, seq_len, cfg.seed)
    state, state_sh = init.state, init.shardings
    wall_offset = 0.0
    restored = restore_checkpoint(ckpt, state, model_cfg)
    if restored is None and cfg.train.init_from and cfg.train.init_from_params == "matching":
      state, report = warm_start.load_matching(cfg.train.init_from, state, model_cfg, src_dir, src_step)
      if is_writer:
        with open(os.path.join(workdir, "init_from.json"), "w") as f:
          json.dump({"init_from": cfg.train.init_from, "step": src_step, **report}, f, indent=1)
    elif restored is None and cfg.train.init_from:
      state = load_init_params(cfg.train.init_from, state, model_cfg)
    if restored is not None:
      restored_step, state, meta = restored
      data.train.set_state(meta["data"])
      wall_offset = float(meta.get("wall_s", 0.0))
      writer.truncate_after(restored_step)
    start_step = int(jax.device_get(state.step))

    options = model_compiler_options(model_cfg)
    step_fn = compile_options.jit(make_train_step(objective, model, tx, schedule, cfg.train, cfg.seed),
                                  options, in_shardings=(state_sh, batch_sh),
                                  out_shardings=(state_sh, None), donate_argnums=0)
    eval_fn = compile_options.jit(make_eval_step(objective, model, data.tokenizer.token_bytes()), options)
    track = jax.jit(track_nonfinite, static_argnums=())
    first_bad, num_bad = jnp.array(-1, jnp.int32), jnp.array(0, jnp.int32)

    t0 = time.perf_counter()
    clock = {"t": t0, "step": start_step}  # when the last fetched step was known to be done
    last = {"train": None, "eval": None}

    def emit(record: dict) -> None:
      writer.write(record)
      last[record["split"]] = record
      if progress is not None:
        progress(record)

    def save(step: int) -> None:
      stored = layout.to_storage(state, model_cfg.scan_layers, model_cfg.num_layers)
      ckpt.save(step, stored, {"data": data.train.get_state(), "wall_s": wall_offset + time.perf_counter() - t0,
                               "model": dataclasses.asdict(model_cfg), "step": step})

    def flush(pending) -> None:
      step, metrics = pending
      m, bad, nbad = jax.device_get((metrics, first_bad, num_bad))
      m = {k: float(v) for k, v in m.items()}
      now = time.perf_counter()  # after the fetch: dispatch is asynchronous
      t_prev, step_prev = clock["t"], clock["step"]
      clock.update(t=now, step=step)
      if int(bad) >= 0 and policy == "stop":
        raise TrainingDiverged(
            f"the loss or gradient is NaN/Inf at step {int(bad)} (that update was not applied); the last good "
            f"checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. Lower train.learning_rate, raise "
            "train.warmup_steps or train.grad_clip, or set train.nonfinite=skip to skip such steps.")
      dt = max(now - t_prev, 1e-9)
      tokens = step * tokens_per_step
      tok_s = (step - step_prev) * tokens_per_step / dt
      flops_tok = flops_per_step / tokens_per_step
      m.pop("nonfinite")
      emit({"step": step, "split": "train", **m, "tokens_seen": tokens, "flops_seen": step * flops_per_step,
            "tokens_per_s": tok_s, "step_time_s": dt / max(step - step_prev, 1),
            "mfu": tok_s * flops_tok / peak if peak > 0 else float("nan"),
            "skipped_steps": int(nbad), "wall_s": wall_offset + now - t0,
            "total_steps": cfg.train.num_steps, "num_params": init.num_params, "compile_s": compile_s})

    try:
      pending = None
      preempted = False
      compile_s = 0.0
      if start_step < cfg.train.num_steps:  # compile ahead so throughput excludes compilation
        host_batch = next(data.train)
        tokens_per_step, flops_per_step = step_cost(
            model_cfg, {k: (v.shape[0] * process_count,) + v.shape[1:] for k, v in host_batch.items()})
        batch = sharding.put_batch(host_batch, mesh)
        t_compile = time.perf_counter()
        step_fn = step_fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - t_compile
        clock["t"] = time.perf_counter()
      for step in range(start_step, cfg.train.num_steps):
        if profile_steps and step == profile_steps[0]:
          jax.profiler.start_trace(os.path.join(workdir, "profile"))
        if step > start_step:
          batch = sharding.put_batch(next(data.train), mesh)
        state, metrics = step_fn(state, batch)
        done = step + 1
        first_bad, num_bad = track(first_bad, num_bad, metrics, done)
        if profile_steps and done == profile_steps[1]:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
        if pending is not None:  # step n-1's metrics, fetched after step n was dispatched
          flush(pending)
          pending = None
        last_step = done == cfg.train.num_steps
        if done % cfg.train.log_every == 0 or last_step:
          pending = (done, metrics)
        if done % cfg.train.eval_every == 0 or last_step:
          if pending is not None:
            flush(pending)
            pending = None
          ev = evaluate(objective, eval_fn, state.params, data.eval_batches, mesh)
          tokens = done * tokens_per_step
          emit({"step": done, "split": "eval", **ev, "tokens_seen": tokens, "flops_seen": done * flops_per_step,
                "wall_s": wall_offset + time.perf_counter() - t0, **data.metadata})
          clock.update(t=time.perf_counter(), step=done)  # eval time is not training throughput
        if after_step is not None:
          after_step(done)
        if done % cfg.train.checkpoint_every == 0 or last_step or preemption.requested:
          if pending is not None:  # never checkpoint past a non-finite step unnoticed
            flush(pending)
            pending = None
          save(done)
        if preemption.requested:
          preempted = True
          break
      if pending is not None:
        flush(pending)
    finally:
      ckpt.close()  # waits for an in-flight save, also when the run stops with an error
  writer.close()
  return {"train": last["train"], "eval": last["eval"], "num_params": init.num_params,
          "start_step": start_step, "workdir": workdir, "preempted": preempted,
          "peak_flops": peak, "peak_source": peak_source, "compile_s": compile_s}
