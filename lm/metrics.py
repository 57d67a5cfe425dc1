"""FLOPs accounting and metric writers (metrics.jsonl + TensorBoard events).

FLOPs per trained token (one documented formula, used by every report):

    flops_per_token = 6 * (N_matmul + d_model * vocab) + 6 * n_layers * T * d_attn

* `N_matmul` = parameters of the per-layer matrix multiplies (Q, K, V, O and the
  MLP); norms, biases and the embedding lookup are ignored (they are not matmuls).
* `d_model * vocab` is the output projection (tied or not: it is a matmul either way).
* 6 = 2 (multiply-add) x 3 (forward + backward for inputs and weights).
* Attention scores and the weighted sum cost 2 * 2 * T * d_attn per token and layer
  in the forward pass for full attention over T keys (d_attn = heads * head_dim);
  causal attention only computes the lower triangle, counted once: T/2 keys on
  average, so forward + backward is 3 * 4 * (T/2) * d_attn = 6 * T * d_attn.
"""
from __future__ import annotations

import json
import os
from typing import Any

from lm.config import ModelConfig
from lm.layers import GATED_ACTIVATIONS


def matmul_params(cfg: ModelConfig) -> int:
  d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.resolved_head_dim
  attention = d * h * k + 2 * d * g * k + h * k * d
  mlp = (3 if cfg.mlp_activation in GATED_ACTIVATIONS else 2) * d * cfg.mlp_dim
  return cfg.num_layers * (attention + mlp)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token of a decoder-only model (see module docstring)."""
  dense = 6 * (matmul_params(cfg) + cfg.d_model * cfg.vocab_size)
  attention = 6 * cfg.num_layers * seq_len * cfg.num_heads * cfg.resolved_head_dim
  return float(dense + attention)


def _layer_params(cfg: ModelConfig) -> tuple[int, int]:
  """(attention projection params, MLP params) of one layer."""
  d, h, g, k = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.resolved_head_dim
  mlp = (3 if cfg.mlp_activation in GATED_ACTIVATIONS else 2) * d * cfg.mlp_dim
  return d * h * k + 2 * d * g * k + h * k * d, mlp


def step_cost(cfg: ModelConfig, batch_shapes: dict[str, tuple[int, ...]]) -> tuple[int, float]:
  """(tokens, training FLOPs) of one step, per family, from the batch's array shapes.

  Same conventions as the module docstring, extended:
  * encoder (bidirectional) attention is full: 12 * layers * T * d_attn per token;
  * an encoder-decoder counts encoder tokens S and decoder tokens T: encoder layers on S
    tokens, decoder self-attention causal over T, cross-attention full over S (its K/V
    projections run on encoder tokens), and the output projection on decoder tokens;
  * the MLM head (d x d transform + tied output) runs on every position.
  Tokens are all input positions processed (encoder + decoder for encoder-decoders).
  """
  d_attn = cfg.num_heads * cfg.resolved_head_dim
  attn_p, mlp_p = _layer_params(cfg)
  out = cfg.d_model * cfg.vocab_size
  if cfg.family == "encoder_decoder":
    b, s = batch_shapes["encoder_inputs"][:2]
    t = batch_shapes["decoder_inputs"][1]
    dec_layers = cfg.num_decoder_layers or cfg.num_layers
    enc = b * s * (6 * cfg.num_layers * (attn_p + mlp_p) + 12 * cfg.num_layers * s * d_attn)
    dec_self = b * t * (6 * dec_layers * (attn_p + mlp_p) + 6 * dec_layers * t * d_attn)
    kv_p = 2 * cfg.d_model * cfg.kv_heads * cfg.resolved_head_dim
    cross = 6 * dec_layers * (b * t * (attn_p - kv_p) + b * s * kv_p) + b * t * 12 * dec_layers * s * d_attn
    return b * (s + t), float(enc + dec_self + cross + 6 * b * t * out)
  b, t = batch_shapes["inputs"][:2]
  if cfg.family == "encoder":
    per_token = 6 * (cfg.num_layers * (attn_p + mlp_p) + cfg.d_model ** 2 + out) + 12 * cfg.num_layers * t * d_attn
    return b * t, float(b * t * per_token)
  return b * t, float(b * t * flops_per_token(cfg, t))


class MetricsWriter:
  """Appends one JSON object per record to metrics.jsonl and mirrors scalars to TensorBoard.

  Only the process that owns the WORKDIR (process 0) writes; others get a no-op writer.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # no TensorFlow import: starts fast
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=30)

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    split, step = record.get("split", "train"), int(record["step"])
    for key, value in record.items():
      if key not in ("step", "split") and isinstance(value, (int, float)):
        self._tb.add_scalar(f"{split}/{key}", value, step)

  def truncate_after(self, step: int) -> None:
    """On resume, drop records past the restored checkpoint: the run recomputes them exactly."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# Dense bf16 datasheet peaks per chip (FLOP/s), matched against jax's device_kind.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "H100": 989e12,
    "H200": 989e12,
    "H800": 989e12,
    "A100": 312e12,
    "L4": 121e12,
}


def measure_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of a large f32 matmul on the default device (the CPU peak we report MFU against).

  On CPU the matmul runs with XLA's default library and with each one a model may
  choose (lm/compile_options.py), in turn, and the best time of any counts: a
  model's choice of library never lowers the peak its MFU is measured against.
  """
  import time

  import jax
  import jax.numpy as jnp

  from lm.compile_options import ONEDNN_OPTIONS, compile_lowered, onednn_available

  a = jnp.ones((n, n), jnp.float32)
  lowered = jax.jit(lambda x: x @ x).lower(a)
  option_sets = [None]
  if jax.default_backend() == "cpu" and onednn_available():
    option_sets.append(ONEDNN_OPTIONS)
  fns = [compile_lowered(lowered, o) for o in option_sets]
  for f in fns:
    f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    for f in fns:
      t = time.perf_counter()
      f(a).block_until_ready()
      best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def peak_flops(devices, override_per_device: float = 0.0, matmul_n: int = 1024,
               repeats: int = 5) -> tuple[float, str]:
  """Peak FLOP/s of the whole run and where the number comes from.

  Accelerators: datasheet table per chip x chips. CPU: one matmul measurement for the
  host (fake CPU devices share the same cores), times the number of processes.
  """
  import jax

  if override_per_device > 0:
    return override_per_device * len(devices), "config"
  kind = devices[0].device_kind
  if devices[0].platform != "cpu":
    for name, value in PEAK_FLOPS.items():
      if name.lower() in kind.lower():
        return value * len(devices), f"datasheet dense bf16 ({name})"
    return 0.0, f"unknown device kind {kind!r}: set train.peak_flops_per_device"
  return measure_matmul_flops(matmul_n, repeats) * jax.process_count(), f"measured f32 matmul {matmul_n}^3"
