"""IsoFLOP planning: a compute budget C and candidate model shapes -> (shape, tokens, steps).

For each shape, D = C / flops_per_token(shape) tokens, trained as
steps = round(D / (batch_size * seq_len)). FLOPs per token come from one formula
(lm/metrics.py: 6 N_matmul + logits + causal attention), the same number every
run logs as `flops_seen`, so compare.py finds the budgets again from the runs.

  from experiments import isoflop
  shapes = isoflop.shapes_by_aspect([1, 2, 3, 4, 6], aspect=32, head_dim=16)
  points = isoflop.isoflop_points(1e13, shapes, base_model, seq_len=128, batch_size=32)
  axes = isoflop.sweep_axes([1e12, 1e13], shapes, base_model, 128, 32)  # a sweep's `zip`
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from lm.config import ModelConfig
from lm.metrics import flops_per_token, matmul_params


@dataclasses.dataclass(frozen=True)
class Shape:
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int

  def overrides(self) -> dict[str, int]:
    return {f"model.{k}": v for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class IsoFlopPoint:
  budget: float  # the requested C
  shape: Shape
  params: int  # matmul parameters (the N of 6N, without the logits matmul)
  flops_per_token: float
  tokens: float  # D = C / flops_per_token, before rounding to whole steps
  steps: int
  tokens_trained: int  # steps * batch_size * seq_len
  flops_trained: float  # tokens_trained * flops_per_token (what the run will log)


def shapes_by_aspect(num_layers: Sequence[int], aspect: int = 64, head_dim: int = 64,
                     mlp_ratio: int = 4) -> list[Shape]:
  """One shape per depth with d_model ≈ aspect * num_layers, a multiple of head_dim."""
  out = []
  for layers in num_layers:
    d = max(head_dim, round(aspect * layers / head_dim) * head_dim)
    out.append(Shape(d_model=d, num_layers=layers, num_heads=d // head_dim, mlp_dim=mlp_ratio * d))
  return out


def shapes_by_width(d_models: Sequence[int], aspect: int = 64, head_dim: int = 64,
                    mlp_ratio: int = 4) -> list[Shape]:
  """One shape per width with num_layers ≈ d_model / aspect (at least 1)."""
  out = []
  for d in d_models:
    if d % head_dim:
      raise ValueError(f"d_model={d} is not a multiple of head_dim={head_dim}")
    out.append(Shape(d_model=d, num_layers=max(1, round(d / aspect)), num_heads=d // head_dim,
                     mlp_dim=mlp_ratio * d))
  return out


def _model(base: Any) -> ModelConfig:
  if isinstance(base, ModelConfig):
    return base
  return ModelConfig.from_config(base)  # ConfigDict or dict of model fields


def isoflop_points(budget: float, shapes: Sequence[Shape], base_model: Any, seq_len: int,
                   batch_size: int, min_steps: int = 1,
                   flops_fn: Callable[[ModelConfig, int], float] = flops_per_token) -> list[IsoFlopPoint]:
  """(shape, D, steps) for each shape that gets at least `min_steps` steps at this budget."""
  tokens_per_step = batch_size * seq_len
  base = _model(base_model)
  out = []
  for s in shapes:
    cfg = dataclasses.replace(base, **dataclasses.asdict(s))
    fpt = float(flops_fn(cfg, seq_len))
    tokens = budget / fpt
    steps = round(tokens / tokens_per_step)
    if steps < min_steps:
      continue
    out.append(IsoFlopPoint(budget=float(budget), shape=s, params=matmul_params(cfg), flops_per_token=fpt,
                            tokens=tokens, steps=steps, tokens_trained=steps * tokens_per_step,
                            flops_trained=steps * tokens_per_step * fpt))
  return out


def sweep_axes(budgets: Sequence[float], shapes: Sequence[Shape], base_model: Any, seq_len: int,
               batch_size: int, min_steps: int = 1, warmup_fraction: float | None = None,
               flops_fn: Callable[[ModelConfig, int], float] = flops_per_token) -> dict[str, list]:
  """A sweep `zip` group: the model fields and train.num_steps of every (budget, shape) point."""
  axes: dict[str, list] = {k: [] for k in Shape(0, 0, 0, 0).overrides()}
  axes["train.num_steps"] = []
  if warmup_fraction is not None:
    axes["train.warmup_steps"] = []
  for budget in budgets:
    for p in isoflop_points(budget, shapes, base_model, seq_len, batch_size, min_steps, flops_fn):
      for k, v in p.shape.overrides().items():
        axes[k].append(v)
      axes["train.num_steps"].append(p.steps)
      if warmup_fraction is not None:
        axes["train.warmup_steps"].append(max(1, round(warmup_fraction * p.steps)))
  return axes


def describe(points: Sequence[IsoFlopPoint]) -> str:
  """A plain-text table of a plan (for sweep files and the report)."""
  lines = [f"{'budget':>9} {'d_model':>7} {'layers':>6} {'heads':>5} {'mlp':>5} {'params':>10} "
           f"{'flops/tok':>10} {'tokens':>10} {'steps':>6}"]
  for p in points:
    s = p.shape
    lines.append(f"{p.budget:9.2e} {s.d_model:7d} {s.num_layers:6d} {s.num_heads:5d} {s.mlp_dim:5d} "
                 f"{p.params:10,d} {p.flops_per_token:10.3e} {p.tokens_trained:10,d} {p.steps:6d}")
  return "\n".join(lines)
