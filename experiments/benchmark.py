"""Measure a config's train step (and decoding, when available): tokens/s, FLOP/s and MFU.

  python -m experiments.benchmark --config=experiments/configs/ref_tiny.py [--steps=30] [--out=F.json]

MFU is reported against a peak measured in the same process on CPU (the best of
several large f32 matmuls), or the datasheet dense bf16 peak of known
accelerators; `--peak_flops` overrides it. The step runs on random tokens of the
configured shape (data loading is not part of the step; the training loop
overlaps it with compute), with the state donated as in training.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/*.py).")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps (the median is reported); at least 20.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_PEAK = flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s for MFU; 0 = measure (CPU) or datasheet.")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 2048, "Size of the f32 matmul that measures the CPU peak.")
_OUT = flags.DEFINE_string("out", "", "Write the results as JSON here.")
_DECODE = flags.DEFINE_bool("decode", True, "Also measure decoding with and without the KV cache.")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False,
                                  "Only build and compile the train step: report parameters and compile time.")
_OP_PROFILE = flags.DEFINE_integer(
    "op_profile", 0, "After timing, trace 3 steps and print the N slowest ops with their source "
    "and matmul GFLOP/s (lm/op_profile.py); 0 = off.")
flags.mark_flags_as_required(["config"])


def host_peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: KiB


def device_peak_gib(device) -> float | None:
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 1024 ** 3


def measure_peak(devices, override: float, n: int) -> tuple[float, str]:
  """Peak FLOP/s of all devices: the flag, a datasheet, or (CPU) the best of 10 large f32 matmuls."""
  from lm.metrics import peak_flops

  if override > 0:
    return override, "flag"
  return peak_flops(devices, matmul_n=n, repeats=10)


def profile_ops(compiled, state, batch, top: int):
  """Trace 3 steps; (state, per-op rows as dicts, traced ms per step, printable summary,
  traced wall ms per step by what ran)."""
  import tempfile

  import jax

  from lm import op_profile

  steps = 3
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      t = time.perf_counter()
      for _ in range(steps):
        state, _ = compiled(state, batch)
      jax.block_until_ready(state)
      step_ms = (time.perf_counter() - t) * 1e3 / steps
    hlo = compiled.as_text()
    rows = op_profile.op_table(trace_dir, hlo, steps)
    wall = op_profile.wall_breakdown(trace_dir, hlo, steps)
  summary = (op_profile.summarize(rows, top) + f"\ntraced step: {step_ms:.1f} ms (untraced steps are faster)"
             + "\n" + op_profile.format_breakdown(wall))
  return state, [dataclasses.asdict(r) for r in rows[:top]], step_ms, summary, wall


def benchmark_train_step(cfg, steps: int, warmup: int, compile_only: bool = False,
                         op_profile_top: int = 0) -> dict:
  import flax.linen as nn
  import jax

  from lm.compile_options import model_compiler_options
  from lm.metrics import step_cost

  devices = jax.devices()
  from experiments.train_step import build_train_step

  built = build_train_step(cfg)
  model_cfg, compiled, batch = built.model_cfg, built.compiled, built.batch
  if compile_only:
    return {"num_params": built.num_params, "compile_s": built.compile_s, "devices": len(devices),
            "platform": devices[0].platform, "num_layers": model_cfg.num_layers,
            "scan_layers": model_cfg.scan_layers}
  with jax.set_mesh(built.mesh), nn.logical_axis_rules(built.rules):
    for _ in range(warmup):
      built.run()
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      built.run()
      times.append(time.perf_counter() - t)
    ops, ops_text = [], ""
    if op_profile_top:
      built.state, ops, traced_ms, ops_text, wall = profile_ops(compiled, built.state, batch, op_profile_top)
  step_s = statistics.median(times)
  tokens, flops = step_cost(model_cfg, built.batch_shapes)
  flops_tok = flops / tokens
  return {
      "num_params": built.num_params,
      "matmul_library": model_cfg.matmul_library,
      "matmul_compiler_options": model_compiler_options(model_cfg) or {},
      "flops_per_token": flops_tok,
      "compile_s": built.compile_s,
      "step_time_s": step_s,
      "step_time_min_s": min(times),
      # The spread says how far to trust a difference between runs on a shared machine.
      "step_time_quartiles_s": statistics.quantiles(times, n=4, method="inclusive")[::2] if len(times) > 1 else [step_s] * 2,
      "tokens_per_s": tokens / step_s,
      "achieved_flops": flops / step_s,
      "devices": len(devices),
      "platform": devices[0].platform,
      "device_kind": devices[0].device_kind,
      **({"op_profile": ops, "op_profile_traced_step_ms": traced_ms, "op_profile_text": ops_text,
          "op_profile_wall_ms": wall}
         if op_profile_top else {}),
  }


def benchmark_decode(cfg) -> dict:
  """Decode tokens/s with and without the KV cache, when lm.decode provides it."""
  try:
    from lm import decode  # noqa: F401
  except ImportError:
    return {"decode": "not available (lm.decode not built yet)"}
  if not hasattr(decode, "benchmark_decode"):
    return {"decode": "not available (lm.decode has no benchmark_decode)"}
  return decode.benchmark_decode(cfg)


def _spread(r: dict) -> str:
  if "step_time_quartiles_s" not in r:
    return ""
  q1, q3 = (x * 1e3 for x in r["step_time_quartiles_s"])
  return f" (quartiles {q1:.2f}-{q3:.2f}, min {r['step_time_min_s'] * 1e3:.2f})"


def format_table(r: dict) -> str:
  rows = [
      ("config", r["config"]),
      ("parameters", f"{r['num_params']:,}"),
      ("FLOPs per token", f"{r['flops_per_token']:.4g}"),
      ("compile", f"{r['compile_s']:.2f} s"),
      ("train step (median)", f"{r['step_time_s'] * 1e3:.2f} ms" + _spread(r)),
      ("tokens/s", f"{r['tokens_per_s']:,.0f}"),
      ("achieved FLOP/s", f"{r['achieved_flops'] / 1e9:.2f} GFLOP/s"),
      ("peak FLOP/s", f"{r['peak_flops'] / 1e9:.2f} GFLOP/s ({r['peak_source']}"
       + (", best of {:.2f} before and {:.2f} after the steps".format(
           *(x / 1e9 for x in r["peak_flops_before_after"])) if "peak_flops_before_after" in r else "")
       + ")"),
      ("MFU", f"{100 * r['mfu']:.1f}%"),
      ("peak memory", f"{r['peak_memory_gib']:.2f} GiB ({r['memory_source']})"),
      ("reuse host memory", str(r.get("reuse_host_memory", False))),
  ]
  if "matmul_library" in r:
    used = "oneDNN" if r.get("matmul_compiler_options") else "XLA's default"
    rows.append(("matmul library", f"{r['matmul_library']} ({used})"))
  for k, v in r.get("decode", {}).items() if isinstance(r.get("decode"), dict) else []:
    rows.append((k, f"{v:,.1f}" if isinstance(v, float) else str(v)))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv):
  del argv
  import jax
  from absl import logging

  logging.set_verbosity(logging.WARNING)

  if _STEPS.value < 20:
    print("error: --steps must be at least 20 (the median of the steady state is reported)", file=sys.stderr)
    sys.exit(2)
  cfg = _CONFIG.value
  if _OP_PROFILE.value:  # XLA:CPU records per-op trace events only with this flag, read when the backend starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
  from lm import host_memory
  reuse = host_memory.apply_config(cfg)  # before the backend starts: jax.devices() below
  devices = jax.devices()
  if _COMPILE_ONLY.value:
    result = benchmark_train_step(cfg, 0, 0, compile_only=True)
    print(f"{result['num_layers']} layers (scan_layers={result['scan_layers']}), "
          f"{result['num_params']:,} parameters: train step compiled in {result['compile_s']:.2f} s")
    if _OUT.value:
      with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=2)
    return
  peak, source = measure_peak(devices, _PEAK.value, _MATMUL_N.value)
  result = {"config": config_flags.get_config_filename(flags.FLAGS["config"]),
            "overrides": config_flags.get_override_values(flags.FLAGS["config"]),
            **benchmark_train_step(cfg, _STEPS.value, _WARMUP.value, op_profile_top=_OP_PROFILE.value)}
  # Measure the peak again after the step and keep the best: CPU clocks and load drift.
  if devices[0].platform == "cpu" and _PEAK.value <= 0:
    peak_after = measure_peak(devices, 0.0, _MATMUL_N.value)[0]
    result["peak_flops_before_after"] = [peak, peak_after]
    peak = max(peak, peak_after)
  result.update(peak_flops=peak, peak_source=source, mfu=result["achieved_flops"] / peak if peak else float("nan"))
  dev_mem = device_peak_gib(devices[0]) if devices[0].platform != "cpu" else None
  result["peak_memory_gib"] = dev_mem if dev_mem is not None else host_peak_rss_gib()
  result["memory_source"] = "device peak_bytes_in_use" if dev_mem is not None else "host peak RSS"
  result["decode"] = benchmark_decode(cfg) if _DECODE.value else {}
  result["reuse_host_memory"] = reuse
  result["date"] = time.strftime("%Y-%m-%d")
  print(format_table(result))
  if result.get("op_profile_text"):
    print("\n" + result.pop("op_profile_text"))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
  app.run(main)
