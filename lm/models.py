"""Model families. Decoder-only causal LM for now, plus parameter counting and
ModelConfig validation.

DecoderLM param tree (`params/...`):
  token_embed/embedding     [V, D]        ("vocab", "embed")
  pos_embed/embedding       [max_len, D]  ("pos", "embed")      position="learned" only
  decoder/layers/...        scanned block params, leading "layers" axis (see lm/transformer.py)
  decoder/layers_{i}/...    the same, unrolled (scan_layers=False)
  final_norm/scale[, bias]  [D]           ("embed",)
  output/kernel             [D, V]        ("embed", "vocab")    tie_embeddings=False only
Logits are float32, constrained to ("batch", "length", "act_vocab").
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm.attention import sinusoidal_embedding
from lm.config import ConfigError, ModelConfig
from lm.layers import BLD, NORMS, VALID_DTYPES, Einsum, Embed, compute_dtype, fan_in_init, make_norm
from lm.transformer import REMAT_POLICIES, DecoderStack

FAMILIES = ("decoder",)
POSITIONS = ("rope", "learned", "sinusoidal")
MLP_ACTIVATIONS = ("swiglu", "gelu")
EMBEDDING_PARAMS = ("token_embed", "pos_embed")  # top-level subtrees excluded from N


class DecoderLM(nn.Module):
  """GPT-style causal LM: embed (+ positions) -> decoder stack -> final norm -> logits."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, positions_BL: Optional[jax.Array] = None,
               segment_ids_BL: Optional[jax.Array] = None, deterministic: bool = True) -> jax.Array:
    cfg = self.cfg
    b, l = tokens_BL.shape
    if positions_BL is None:
      positions_BL = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    if segment_ids_BL is None:
      segment_ids_BL = jnp.ones((b, l), jnp.int32)

    embed = Embed(cfg, cfg.vocab_size, name="token_embed")
    x_BLD = embed(tokens_BL)
    if cfg.position == "learned":
      if l > cfg.max_len:
        raise ValueError(f"sequence length {l} exceeds model.max_len={cfg.max_len} "
                         "(the learned position table); raise model.max_len")
      x_BLD = x_BLD + Embed(cfg, cfg.max_len, ("pos", "embed"), name="pos_embed")(positions_BL)
    elif cfg.position == "sinusoidal":
      x_BLD = x_BLD + sinusoidal_embedding(positions_BL, cfg.d_model).astype(x_BLD.dtype)
    x_BLD = nn.with_logical_constraint(x_BLD, BLD)

    x_BLD = DecoderStack(cfg, name="decoder")(x_BLD, positions_BL, segment_ids_BL, deterministic)
    x_BLD = make_norm(cfg, "final_norm")(x_BLD)

    if cfg.tie_embeddings:
      logits_BLV = embed.attend(x_BLD)
    else:
      logits_BLV = Einsum((cfg.d_model, cfg.vocab_size), ("embed", "vocab"), "bld,dv->blv",
                          fan_in_init(), cfg, name="output")(x_BLD)
    logits_BLV = logits_BLV.astype(jnp.float32)
    return nn.with_logical_constraint(logits_BLV, ("batch", "length", "act_vocab"))


# ---------------------------------------------------------------- parameter counts

def _size(x) -> int:
  return int(np.prod(x.shape))


def count_params(params: Any) -> int:
  """Total number of parameters (boxed or plain leaves, arrays or ShapeDtypeStructs)."""
  leaves = jax.tree_util.tree_leaves(nn.meta.unbox(params))
  return sum(_size(x) for x in leaves)


def non_embedding_params(params: Any, cfg: ModelConfig) -> int:
  """Parameters excluding the token embedding and the learned position table.

  Like Kaplan et al. (2020), only embedding tables are excluded. An untied output
  projection (`output/kernel`) is a real matmul per token and IS counted; a tied
  model's logit matmul reuses the token table, so it is not in this number (a FLOPs
  count should add 2*D*V per token for it). Accepts `params` or {"params": params}.
  """
  del cfg  # the excluded subtrees are found by name; cfg kept for a stable signature
  tree = params["params"] if isinstance(params, Mapping) and "params" in params else params
  return count_params({k: v for k, v in tree.items() if k not in EMBEDDING_PARAMS})


# ---------------------------------------------------------------- validation

def _choice(field: str, value: str, valid: tuple) -> None:
  if value not in valid:
    raise ConfigError(f"model.{field}={value!r} is not one of: {', '.join(valid)}; "
                      f"set model.{field} to one of them")


def validate_model_config(cfg: Any) -> None:
  """Raise ConfigError naming the field and the fix for an unusable ModelConfig.

  Accepts a ModelConfig or the run config's `model` ConfigDict / dict.
  """
  if not isinstance(cfg, ModelConfig):
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ConfigError(f"unknown model field(s): {', '.join('model.' + u for u in unknown)}; "
                        f"valid fields: {', '.join(sorted(known))}")
    cfg = ModelConfig(**d)

  _choice("family", cfg.family, FAMILIES)
  _choice("position", cfg.position, POSITIONS)
  _choice("norm", cfg.norm, tuple(NORMS))
  _choice("mlp_activation", cfg.mlp_activation, MLP_ACTIVATIONS)
  _choice("remat_policy", cfg.remat_policy, REMAT_POLICIES)
  _choice("dtype", cfg.dtype, VALID_DTYPES)
  _choice("param_dtype", cfg.param_dtype, VALID_DTYPES)

  for field in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim", "max_len"):
    value = getattr(cfg, field)
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f"model.{field}={value!r} must be an integer >= 1")
  for field in ("num_kv_heads", "head_dim"):
    value = getattr(cfg, field)
    if not isinstance(value, int) or value < 0:
      raise ConfigError(f"model.{field}={value!r} must be an integer >= 0 "
                        "(0 means the default derived from num_heads / d_model)")

  if cfg.head_dim == 0 and cfg.d_model % cfg.num_heads:
    raise ConfigError(f"model.num_heads={cfg.num_heads} must divide model.d_model={cfg.d_model} "
                      "when model.head_dim=0; change num_heads or d_model, or set model.head_dim")
  if cfg.num_heads % cfg.kv_heads:
    raise ConfigError(f"model.num_heads must be a multiple of model.num_kv_heads "
                      f"(got num_heads={cfg.num_heads}, num_kv_heads={cfg.num_kv_heads}); "
                      "choose num_kv_heads dividing num_heads (0 means num_heads)")
  if cfg.position == "rope" and cfg.resolved_head_dim % 2:
    raise ConfigError(f"model.position='rope' needs an even head dim, got "
                      f"{cfg.resolved_head_dim}; change model.head_dim (or d_model/num_heads)")
  if cfg.position == "sinusoidal" and cfg.d_model % 2:
    raise ConfigError(f"model.position='sinusoidal' needs an even model.d_model, "
                      f"got {cfg.d_model}; change model.d_model")
  if not 0.0 <= cfg.dropout_rate < 1.0:
    raise ConfigError(f"model.dropout_rate={cfg.dropout_rate} must be in [0, 1)")
  if not cfg.norm_eps > 0:
    raise ConfigError(f"model.norm_eps={cfg.norm_eps} must be > 0")
  if cfg.position == "rope" and not cfg.rope_base > 0:
    raise ConfigError(f"model.rope_base={cfg.rope_base} must be > 0")
