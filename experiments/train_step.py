"""A config's train step, compiled and ready to time: shared by benchmark.py and benchmark_ab.py.

No absl flags here, so both command-line tools can import it.
"""
from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass
class BuiltStep:
  """A compiled train step with its first state and a random batch of the config's shape."""
  compiled: object
  state: object
  batch: dict
  num_params: int
  compile_s: float
  model_cfg: object
  batch_shapes: dict
  mesh: object
  rules: object

  def run(self):
    """One step, waited for; the state is donated and replaced."""
    import jax

    self.state, _ = self.compiled(self.state, self.batch)
    jax.block_until_ready(self.state)


def build_train_step(cfg, compiler_options: dict | None = None) -> BuiltStep:
  """Lower and compile cfg's train step (state donated) on all devices, timing the compile.

  `compiler_options`: XLA options for this compile only (e.g. {"xla_cpu_prefer_vector_width": 512}),
  on top of those of cfg.model.matmul_library (lm/compile_options.py).
  """
  import flax.linen as nn
  import jax
  import numpy as np

  from lm import sharding
  from lm.compile_options import compile_lowered, model_compiler_options
  from lm.steps import make_train_step
  from lm.train import init_train_state, setup_run

  run = setup_run(cfg, jax.devices())
  objective, model_cfg, mesh, rules, model, tx, schedule = (
      run.objective, run.model_cfg, run.mesh, run.rules, run.model, run.tx, run.schedule)
  b, l = cfg.train.batch_size, cfg.data.seq_len
  rng = np.random.default_rng(0)
  host_batch = {k: np.asarray(v) for k, v in objective.init_batch(b, l).items()}
  host_batch["inputs"] = rng.integers(4, model_cfg.vocab_size, (b, l), dtype=np.int32)
  if "targets" in host_batch:
    host_batch["targets"] = rng.integers(4, model_cfg.vocab_size, (b, l), dtype=np.int32)
  if "positions" in host_batch:
    host_batch["positions"] = np.broadcast_to(np.arange(l, dtype=np.int32), (b, l)).copy()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    init = init_train_state(objective, model, tx, mesh, rules, l, cfg.seed)
    batch = sharding.put_batch(host_batch, mesh)
    step_fn = jax.jit(make_train_step(objective, model, tx, schedule, cfg.train, cfg.seed),
                      in_shardings=(init.shardings, sharding.batch_sharding(mesh)),
                      out_shardings=(init.shardings, None), donate_argnums=0)
    t = time.perf_counter()
    options = {**(model_compiler_options(model_cfg) or {}), **(compiler_options or {})}
    compiled = compile_lowered(step_fn.lower(init.state, batch), options or None)
    compile_s = time.perf_counter() - t
  return BuiltStep(compiled, init.state, batch, init.num_params, compile_s, model_cfg,
                   {k: v.shape for k, v in host_batch.items()}, mesh, rules)
