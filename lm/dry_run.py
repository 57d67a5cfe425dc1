"""Compile the train step for the configured mesh and report its size, without training.

Nothing is allocated: parameters, optimizer state and the batch are abstract
(shapes + shardings), so a 1B-parameter model dry-runs on a laptop with fake
devices. Memory per device comes from the shardings (params, optimizer state)
and from the compiled executable (temporaries).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lm import sharding
from lm.compile_options import compile_lowered, model_compiler_options
from lm.metrics import step_cost
from lm.steps import make_train_step
from lm.train import abstract_train_state, setup_run

GIB = 1024 ** 3


def _bytes_per_device(tree: Any) -> int:
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
    total += int(np.prod(shape)) * np.dtype(x.dtype).itemsize
  return total


def dry_run(cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None,
            device_memory_gb: float = 0.0) -> dict:
  devices = list(devices if devices is not None else jax.devices())
  run = setup_run(cfg, devices)
  objective, model_cfg, mesh, rules, model, tx, schedule = (
      run.objective, run.model_cfg, run.mesh, run.rules, run.model, run.tx, run.schedule)
  seq_len, batch_size = cfg.data.seq_len, cfg.train.batch_size
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract, state_sh, _ = abstract_train_state(objective, model, tx, mesh, rules, seq_len, cfg.seed)
    batch_sh = sharding.batch_sharding(mesh)
    example = jax.eval_shape(lambda: objective.init_batch(batch_size, seq_len))
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sh), example)
    step_fn = jax.jit(make_train_step(objective, model, tx, schedule, cfg.train, cfg.seed),
                      in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=0)
    compiled = compile_lowered(step_fn.lower(abstract, batch), model_compiler_options(model_cfg))
  mem = compiled.memory_analysis()
  params_b = _bytes_per_device(abstract.params)
  opt_b = _bytes_per_device(abstract.opt_state)
  temp_b = int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else 0
  total_b = params_b + opt_b + temp_b
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  tokens, flops = step_cost(model_cfg, {k: v.shape for k, v in example.items()})
  report = {
      "num_params": num_params,
      "flops_per_token": flops / tokens,
      "flops_per_step": flops,
      "mesh": dict(mesh.shape),
      "devices": len(devices),
      "per_device_gib": {"params": params_b / GIB, "optimizer": opt_b / GIB, "temporaries": temp_b / GIB,
                         "total": total_b / GIB},
  }
  if device_memory_gb > 0:
    report["device_memory_gib"] = device_memory_gb
    report["fits"] = total_b / GIB <= device_memory_gb
  return report


def format_report(r: dict) -> str:
  m = r["per_device_gib"]
  lines = [
      f"parameters:        {r['num_params']:,}",
      f"FLOPs per token:   {r['flops_per_token']:.4g}",
      f"FLOPs per step:    {r['flops_per_step']:.4g}",
      f"mesh:              {r['mesh']} over {r['devices']} devices",
      "per-device memory (GiB):",
      f"  params           {m['params']:.3f}",
      f"  optimizer state  {m['optimizer']:.3f}",
      f"  temporaries      {m['temporaries']:.3f}",
      f"  total            {m['total']:.3f}",
  ]
  if "fits" in r:
    verdict = "fits in" if r["fits"] else "EXCEEDS"
    lines.append(f"{verdict} the {r['device_memory_gib']:g} GiB of device memory")
  return "\n".join(lines)
