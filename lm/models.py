"""Model families, parameter counting and ModelConfig validation.

`make_model(cfg)` builds the family cfg.family names:
  "decoder"          DecoderLM here (GPT-style causal LM; prefix-LM with `prefix_mask_BL`);
  "encoder"          lm/bert.py EncoderLM (BERT: MLM and NSP heads);
  "encoder_decoder"  lm/encoder_decoder.py EncoderDecoderLM (T5-style).

DecoderLM param tree (`params/...`):
  token_embed/embedding     [V, D]        ("vocab", "embed")
  pos_embed/embedding       [max_len, D]  ("pos", "embed")      position="learned" only
  decoder/layers/...        scanned block params, leading "layers" axis (see lm/transformer.py)
  decoder/layers_{i}/...    the same, unrolled (scan_layers=False)
  decoder/relpos_bias/embedding [buckets, H] ("relpos_buckets", "heads")  position="relative"
  final_norm/scale[, bias]  [D]           ("embed",)            norm_placement="pre" only
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

from lm.attention import ATTENTION_IMPLS, make_attention_mask
from lm.weight_grads import WEIGHT_GRAD_IMPLS
from lm.compile_options import MATMUL_LIBRARIES
from lm.config import ConfigError, ModelConfig
from lm.layers import NORMS, VALID_DTYPES, Einsum, Embed, fan_in_init, make_norm
from lm.transformer import REMAT_POLICIES, TransformerStack, default_positions, embed_tokens
from lm.unfused import materialized

FAMILIES = ("decoder", "encoder", "encoder_decoder")
POSITIONS = ("rope", "learned", "sinusoidal", "relative")
MLP_ACTIVATIONS = ("swiglu", "gelu", "gelu_exact", "relu", "geglu")
NORM_PLACEMENTS = ("pre", "post")
EMBEDDING_PARAMS = ("token_embed", "pos_embed", "type_embed")  # top-level subtrees excluded from N


def make_model(cfg: ModelConfig) -> nn.Module:
  """The Flax module of cfg.family."""
  if cfg.family == "encoder":
    from lm.bert import EncoderLM
    return EncoderLM(cfg)
  if cfg.family == "encoder_decoder":
    from lm.encoder_decoder import EncoderDecoderLM
    return EncoderDecoderLM(cfg)
  return DecoderLM(cfg)


def lm_logits(cfg: ModelConfig, embed: Embed, x_BLD: jax.Array) -> jax.Array:
  """float32 logits from final features: tied to the token table or an `output` kernel."""
  if cfg.output_scale != 1.0:
    x_BLD = x_BLD * jnp.asarray(cfg.output_scale, x_BLD.dtype)
  if cfg.tie_embeddings:
    logits_BLV = embed.attend(x_BLD)
  else:
    logits_BLV = Einsum((cfg.d_model, cfg.vocab_size), ("embed", "vocab"), "bld,dv->blv",
                        fan_in_init(), cfg, name="output")(x_BLD)
  return nn.with_logical_constraint(logits_BLV.astype(jnp.float32),
                                    ("batch", "length", "act_vocab"))


class DecoderLM(nn.Module):
  """GPT-style causal LM: embed (+ positions) -> decoder stack -> final norm -> logits.

  `prefix_mask_BL` (1 = prefix token) turns it into a prefix-LM: each document's
  prefix attends bidirectionally, the rest causally.

  `cache` (decoding, lm/decode.py): a dict of k, v [layers, B, T, G, K], the
  segment ids and positions of the T slots [B, T] and `index`, the slot of the
  first of the L new tokens. The call then returns (logits, the updated cache).
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BL: jax.Array, positions_BL: Optional[jax.Array] = None,
               segment_ids_BL: Optional[jax.Array] = None, deterministic: bool = True,
               prefix_mask_BL: Optional[jax.Array] = None, cache: Optional[dict] = None):
    cfg = self.cfg
    positions_BL, segment_ids_BL = default_positions(tokens_BL, positions_BL, segment_ids_BL)
    embed = Embed(cfg, cfg.vocab_size, name="token_embed")
    x_BLD = embed_tokens(cfg, embed, tokens_BL, positions_BL)
    if cfg.embed_norm:
      x_BLD = make_norm(cfg, "embed_norm")(x_BLD)
    stack = TransformerStack(cfg, causal=prefix_mask_BL is None, name="decoder")
    # Bidirectional relative-position buckets (position="relative"), so the same
    # params serve causal and prefix-LM training.
    if cache is None:
      mask_B1LS = make_attention_mask(segment_ids_BL, segment_ids_BL, causal=True,
                                      prefix_BL=prefix_mask_BL)
      x_BLD = stack(x_BLD, positions_BL, mask_B1LS, deterministic=deterministic)
    else:
      cache = cache_write(cache, segment_ids_BL, positions_BL)
      mask_B1LS = cache_mask(cache, segment_ids_BL)
      x_BLD, (k, v) = stack(x_BLD, positions_BL, mask_B1LS, cache_kv=(cache["k"], cache["v"]),
                            cache_index=cache["index"], kv_positions_BS=cache["positions"])
      cache = dict(cache, k=k, v=v, index=cache["index"] + tokens_BL.shape[1])
    if cfg.norm_placement == "pre":
      # On CPU, YNNPACK would fuse the norm's reductions into the last layer's
      # down-projection GEMM and run it slower than oneDNN does (lm/unfused.py).
      x_BLD = make_norm(cfg, "final_norm")(materialized(x_BLD))
    logits_BLV = lm_logits(cfg, embed, x_BLD)
    return logits_BLV if cache is None else (logits_BLV, cache)


def cache_write(cache: dict, segment_ids_BL, positions_BL) -> dict:
  """Records the new tokens' segment ids and positions at slots index..index+L-1."""
  idx = cache["index"]
  return dict(cache,
              segment_ids=jax.lax.dynamic_update_slice(
                  cache["segment_ids"], segment_ids_BL.astype(jnp.int32), (0, idx)),
              positions=jax.lax.dynamic_update_slice(
                  cache["positions"], positions_BL.astype(jnp.int32), (0, idx)))


def cache_mask(cache: dict, segment_ids_BL) -> jax.Array:
  """[B, 1, L, T]: causal over slots (new token i sits at slot index + i), padding and
  empty slots (segment 0) excluded."""
  b, l = segment_ids_BL.shape
  t = cache["segment_ids"].shape[1]
  q_slots_BL = jnp.broadcast_to(cache["index"] + jnp.arange(l, dtype=jnp.int32), (b, l))
  kv_slots_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  return make_attention_mask(segment_ids_BL, cache["segment_ids"], causal=True,
                             q_positions=q_slots_BL, kv_positions=kv_slots_BT)


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
  _choice("norm_placement", cfg.norm_placement, NORM_PLACEMENTS)
  _choice("position", cfg.position, POSITIONS)
  _choice("norm", cfg.norm, tuple(NORMS))
  _choice("mlp_activation", cfg.mlp_activation, MLP_ACTIVATIONS)
  _choice("remat_policy", cfg.remat_policy, REMAT_POLICIES)
  _choice("attention_impl", cfg.attention_impl, ATTENTION_IMPLS)
  _choice("weight_grad_impl", cfg.weight_grad_impl, WEIGHT_GRAD_IMPLS)
  _choice("matmul_library", cfg.matmul_library, MATMUL_LIBRARIES)
  if not isinstance(cfg.scan_unroll, int) or cfg.scan_unroll < 0:
    raise ConfigError(f"model.scan_unroll={cfg.scan_unroll!r} must be an integer >= 0 "
                      "(layers per scan iteration; 0 = auto).")
  if not isinstance(cfg.attention_block_size, int) or cfg.attention_block_size < 0:
    raise ConfigError(f"model.attention_block_size={cfg.attention_block_size!r} must be an "
                      "integer >= 0 (causal query block of the blocked attention; 0 = one block).")
  _choice("dtype", cfg.dtype, VALID_DTYPES)
  _choice("param_dtype", cfg.param_dtype, VALID_DTYPES)

  for field in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim", "max_len"):
    value = getattr(cfg, field)
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f"model.{field}={value!r} must be an integer >= 1")
  for field in ("num_kv_heads", "head_dim", "type_vocab_size", "num_decoder_layers"):
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
  if not (isinstance(cfg.output_scale, (int, float)) and cfg.output_scale > 0):
    raise ConfigError(f"model.output_scale={cfg.output_scale!r} must be a number > 0 (1.0 = no scaling)")
  if not isinstance(cfg.decoder_start_id, int) or not 0 <= cfg.decoder_start_id < cfg.vocab_size:
    raise ConfigError(f"model.decoder_start_id={cfg.decoder_start_id!r} must be a token id in "
                      f"[0, vocab_size={cfg.vocab_size})")
  if cfg.output_scale != 1.0 and cfg.family == "encoder":
    raise ConfigError(f"model.output_scale={cfg.output_scale} does not apply to the encoder "
                      "family (its MLM head has its own transform); set it to 1.0")
  if not isinstance(cfg.scale_attention, bool):
    raise ConfigError(f"model.scale_attention={cfg.scale_attention!r} must be true or false")
  if not cfg.norm_eps > 0:
    raise ConfigError(f"model.norm_eps={cfg.norm_eps} must be > 0")
  if cfg.position == "rope" and not cfg.rope_base > 0:
    raise ConfigError(f"model.rope_base={cfg.rope_base} must be > 0")
  if cfg.position == "relative":
    buckets, distance = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
    if not isinstance(buckets, int) or buckets < 4:
      raise ConfigError(f"model.relative_attention_num_buckets={buckets!r} must be an integer "
                        ">= 4 (half exact, half log-spaced distances per direction); T5 uses 32")
    if not isinstance(distance, int) or distance <= buckets // 2:
      raise ConfigError(f"model.relative_attention_max_distance={distance!r} must be an integer > "
                        f"relative_attention_num_buckets // 2 = {buckets // 2}; T5 uses 128")
  if cfg.num_decoder_layers and cfg.family != "encoder_decoder":
    raise ConfigError(f"model.num_decoder_layers={cfg.num_decoder_layers} only applies to "
                      f"model.family='encoder_decoder' (family is {cfg.family!r}); set it to 0")
