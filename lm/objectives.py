"""Training objectives: the model a run builds, its loss, and its eval metrics.

An objective ties a model family to a batch format and a loss. The training
loop only calls the methods below, so a new objective (MLM+NSP, span
corruption, prefix-LM, SFT) is a new class here plus its data preprocessing.

Losses and softmax are computed in float32 whatever the compute dtype.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm.config import ConfigError, ModelConfig


def token_losses(logits_BLV: jax.Array, targets_BL: jax.Array) -> jax.Array:
  """Per-token negative log-likelihood in nats, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BLV.astype(jnp.float32), targets_BL)


class CausalLM:
  """Next-token prediction on every target whose weight is 1 (padding has weight 0).

  Batch: inputs, targets, segment_ids, positions [B, L] int32; weights [B, L] float32.
  The loss is normalised by the number of weighted target tokens in the batch.
  """
  name = "clm"
  batch_keys = ("inputs", "targets", "segment_ids", "positions", "weights")

  def make_model(self, cfg: ModelConfig) -> nn.Module:
    from lm.models import DecoderLM
    return DecoderLM(cfg)

  def init_batch(self, batch_size: int, seq_len: int) -> dict[str, jax.Array]:
    z = jnp.zeros((batch_size, seq_len), jnp.int32)
    return {"inputs": z, "targets": z, "segment_ids": z + 1, "positions": z,
            "weights": jnp.ones((batch_size, seq_len), jnp.float32)}

  def init_params(self, model: nn.Module, rng: jax.Array, batch: dict) -> Any:
    return model.init({"params": rng}, batch["inputs"], batch["positions"], batch["segment_ids"],
                      deterministic=True)["params"]

  def logits(self, model, params, batch, *, deterministic: bool, rng=None) -> jax.Array:
    rngs = None if deterministic else {"dropout": rng}
    return model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"],
                       deterministic=deterministic, rngs=rngs)

  def loss(self, model, params, batch, *, deterministic: bool, rng=None, num_tokens=None):
    """Mean loss over weighted targets; `num_tokens` overrides the normaliser (grad accumulation)."""
    logits = self.logits(model, params, batch, deterministic=deterministic, rng=rng)
    w = batch["weights"]
    denom = jnp.maximum(w.sum(), 1.0) if num_tokens is None else num_tokens
    return (token_losses(logits, batch["targets"]) * w).sum() / denom, {}

  def eval_sums(self, model, params, batch, token_bytes: jax.Array) -> dict[str, jax.Array]:
    """Sums over one batch: nats, target tokens, and the bytes those tokens decode to."""
    logits = self.logits(model, params, batch, deterministic=True)
    w = batch["weights"]
    nll = token_losses(logits, batch["targets"]) * w
    return {"nll": nll.sum(), "nll_sq": (nll * nll).sum(), "tokens": w.sum(),
            "bytes": (token_bytes[batch["targets"]] * w).sum()}

  def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
    n = max(sums["tokens"], 1.0)
    loss = sums["nll"] / n
    var = max(sums["nll_sq"] / n - loss * loss, 0.0)
    return {
        "loss": loss,
        "loss_stderr": math.sqrt(var / n),  # per-token standard error (tokens treated as independent)
        "perplexity": math.exp(min(loss, 50.0)),
        "bits_per_byte": sums["nll"] / math.log(2) / max(sums["bytes"], 1.0),
        "eval_tokens": sums["tokens"],
    }


OBJECTIVES = {"clm": CausalLM}


def get_objective(name: str):
  if name not in OBJECTIVES:
    raise ConfigError(f"objective={name!r} is not one of: {', '.join(sorted(OBJECTIVES))}; set objective to one of them.")
  return OBJECTIVES[name]()
