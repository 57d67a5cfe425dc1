"""The same train step in PyTorch, measured the way experiments/benchmark.py measures ours.

  python -m experiments.torch_peer --config=experiments/configs/ref_tiny.py [--steps=30] [--out=F.json]

The peer is Hugging Face's GPT2LMHeadModel, the PyTorch GPT most trainers start
from, sized from the config's model fields (layers, d_model, heads, MLP, vocab,
context; tied embeddings, tanh GELU, no dropout), trained with torch.optim.AdamW
on random tokens: forward with the loss, backward, optimizer step, zero_grad.
GPT-2 has learned positions and biases where our reference configs have RoPE and
none; neither adds matmul FLOPs, so FLOPs per token use the same formula as ours
(lm/metrics.py). `--compile` runs the model under torch.compile.

MFU is reported against two peaks measured in this process: PyTorch's own f32
matmul (the peak a PyTorch trainer reports against) and JAX's (the peak
experiments/benchmark.py reports against). The two libraries reach different
peaks on the same CPU (see experiments/BENCHMARKS.md), so compare tokens/s and
achieved FLOP/s across them, and MFU only against the same peak.
Needs the `interop` extra (torch, transformers).
"""
from __future__ import annotations

import json
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (experiments/configs/*.py).")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps (the median is reported); at least 20.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (and compilation with --compile).")
_MATMUL_N = flags.DEFINE_integer("matmul_n", 2048, "Size of the f32 matmuls that measure the peaks.")
_COMPILE = flags.DEFINE_bool("compile", False, "Run the model under torch.compile.")
_THREADS = flags.DEFINE_integer("threads", 0, "torch.set_num_threads; 0 = PyTorch's default.")
_OUT = flags.DEFINE_string("out", "", "Write the results as JSON here.")


def check_supported(model_cfg, cfg) -> None:
  """Refuse configs GPT-2 cannot express, naming the field and the fix."""
  from lm.config import ConfigError

  problems = []
  if model_cfg.family != "decoder":
    problems.append(f"model.family={model_cfg.family!r} (the peer is decoder-only: use 'decoder')")
  if model_cfg.kv_heads != model_cfg.num_heads:
    problems.append(f"model.num_kv_heads={model_cfg.num_kv_heads} (GPT-2 has no GQA: use 0)")
  if model_cfg.resolved_head_dim * model_cfg.num_heads != model_cfg.d_model:
    problems.append(f"model.head_dim={model_cfg.head_dim} (GPT-2 needs heads * head_dim == d_model: use 0)")
  if model_cfg.mlp_activation not in ("gelu", "gelu_exact", "relu"):
    problems.append(f"model.mlp_activation={model_cfg.mlp_activation!r} (GPT-2's MLP is not gated: "
                    "use 'gelu', 'gelu_exact' or 'relu')")
  if not model_cfg.tie_embeddings:
    problems.append("model.tie_embeddings=False (GPT-2 ties its output to the input table: use True)")
  if model_cfg.dtype != "float32":
    problems.append(f"model.dtype={model_cfg.dtype!r} (the peer runs float32 on CPU: use 'float32')")
  if cfg.data.seq_len > model_cfg.max_len:
    problems.append(f"data.seq_len={cfg.data.seq_len} > model.max_len={model_cfg.max_len}")
  if problems:
    raise ConfigError("experiments.torch_peer cannot run this config: " + "; ".join(problems))


def build_peer(model_cfg):
  """GPT2LMHeadModel with the config's sizes, in training mode."""
  from transformers import GPT2Config, GPT2LMHeadModel

  act = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}[model_cfg.mlp_activation]
  hf = GPT2Config(vocab_size=model_cfg.vocab_size, n_positions=model_cfg.max_len,
                  n_embd=model_cfg.d_model, n_layer=model_cfg.num_layers, n_head=model_cfg.num_heads,
                  n_inner=model_cfg.mlp_dim, activation_function=act,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                  bos_token_id=None, eos_token_id=None)
  return GPT2LMHeadModel(hf).train()


def torch_matmul_peak(n: int, repeats: int = 10) -> float:
  """Best FLOP/s of `repeats` f32 [n, n] @ [n, n] matmuls in PyTorch."""
  import torch

  a, b = torch.randn(n, n), torch.randn(n, n)
  a @ b
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def jax_matmul_peak(n: int) -> float:
  import jax

  from lm.metrics import peak_flops

  return peak_flops(jax.devices("cpu")[:1], matmul_n=n, repeats=10)[0]


def benchmark_peer(cfg, steps: int, warmup: int, compile_model: bool) -> dict:
  import numpy as np
  import torch

  from lm.config import ModelConfig
  from lm.metrics import step_cost
  from lm.models import validate_model_config

  validate_model_config(cfg.model)
  model_cfg = ModelConfig.from_config(cfg.model)
  check_supported(model_cfg, cfg)
  torch.manual_seed(cfg.seed)
  model = build_peer(model_cfg)
  num_params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, betas=(0.9, 0.95),
                          weight_decay=0.1)
  b, l = cfg.train.batch_size, cfg.data.seq_len
  rng = np.random.default_rng(0)
  ids = torch.from_numpy(rng.integers(4, model_cfg.vocab_size, (b, l)).astype(np.int64))
  forward = torch.compile(model) if compile_model else model

  def step():
    loss = forward(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()

  t = time.perf_counter()
  first_loss = float(step())  # builds the optimizer state (and compiles with --compile)
  first_step_s = time.perf_counter() - t
  for _ in range(warmup):
    loss = step()
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t)
  if not np.isfinite(float(loss)):
    raise RuntimeError(f"the peer's loss is {float(loss)}: the measurement is not of a working step")
  tokens, flops = step_cost(model_cfg, {"inputs": (b, l)})
  step_s = statistics.median(times)
  return {"num_params": num_params, "flops_per_token": flops / tokens, "first_step_s": first_step_s,
          "step_time_s": step_s, "step_time_min_s": min(times), "tokens_per_s": tokens / step_s,
          "achieved_flops": flops / step_s, "first_loss": first_loss, "loss": float(loss),
          "compile": compile_model,
          "torch_version": torch.__version__, "threads": torch.get_num_threads()}


def format_table(r: dict) -> str:
  rows = [
      ("config", r["config"]),
      ("peer", f"transformers GPT2LMHeadModel, torch {r['torch_version']}, "
               f"{r['threads']} threads{', torch.compile' if r['compile'] else ''}"),
      ("parameters", f"{r['num_params']:,}"),
      ("FLOPs per token", f"{r['flops_per_token']:.4g}"),
      ("first step", f"{r['first_step_s']:.2f} s"),
      ("train step (median)", f"{r['step_time_s'] * 1e3:.2f} ms"),
      ("tokens/s", f"{r['tokens_per_s']:,.0f}"),
      ("achieved FLOP/s", f"{r['achieved_flops'] / 1e9:.2f} GFLOP/s"),
      ("PyTorch peak", f"{r['torch_peak_flops'] / 1e9:.2f} GFLOP/s -> MFU {100 * r['mfu_torch_peak']:.1f}%"),
      ("JAX peak", f"{r['jax_peak_flops'] / 1e9:.2f} GFLOP/s -> MFU {100 * r['mfu_jax_peak']:.1f}%"),
  ]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv):
  del argv
  if _STEPS.value < 20:
    print("error: --steps must be at least 20 (the median of the steady state is reported)", file=sys.stderr)
    sys.exit(2)
  import torch
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  if _THREADS.value:
    torch.set_num_threads(_THREADS.value)
  cfg = _CONFIG.value
  jax_peak = jax_matmul_peak(_MATMUL_N.value)
  torch_peak = torch_matmul_peak(_MATMUL_N.value)
  result = {"config": config_flags.get_config_filename(flags.FLAGS["config"]),
            "overrides": config_flags.get_override_values(flags.FLAGS["config"]),
            **benchmark_peer(cfg, _STEPS.value, _WARMUP.value, _COMPILE.value)}
  # Peaks again after the steps, keeping the best of each: CPU clocks and load drift.
  torch_peak = max(torch_peak, torch_matmul_peak(_MATMUL_N.value))
  jax_peak = max(jax_peak, jax_matmul_peak(_MATMUL_N.value))
  result.update(torch_peak_flops=torch_peak, jax_peak_flops=jax_peak,
                mfu_torch_peak=result["achieved_flops"] / torch_peak,
                mfu_jax_peak=result["achieved_flops"] / jax_peak, date=time.strftime("%Y-%m-%d"))
  print(format_table(result))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
  app.run(main)
