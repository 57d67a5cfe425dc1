"""Encoder-only model (BERT): embeddings -> bidirectional encoder -> MLM and NSP heads.

`EncoderLM(cfg)(tokens, positions, segment_ids, token_types)` returns
(mlm_logits [B, L, V], nsp_logits [B, L, 2]), both float32. NSP logits are
computed at every position; the objective reads them at each example's first
token ([CLS]), so packed rows holding several examples need no gather.
`EncoderLM.encode` returns the final hidden states, for classifiers built on top.

The original BERT architecture is the config
  norm_placement="post", norm="layernorm", norm_eps=1e-12, embed_norm=True,
  mlp_activation="gelu_exact", use_bias=True, position="learned", max_len=512,
  type_vocab_size=2, tie_embeddings=True, num_kv_heads=0
(`experiments/configs/bert_base.py` has BERT-base's sizes).

Param tree (`params/...`) with the Hugging Face BertForPreTraining name each maps
to (`hf_bert_to_params` converts a state dict, lm/interop/bert.py a safetensors
directory; "scanned" layers stack layer i at index i of a leading "layers" axis):
  token_embed/embedding [V, D]       bert.embeddings.word_embeddings
  pos_embed/embedding [max_len, D]   bert.embeddings.position_embeddings
  type_embed/embedding [T, D]        bert.embeddings.token_type_embeddings
  embed_norm/{scale,bias} [D]        bert.embeddings.LayerNorm.{weight,bias}
  encoder/layers_{i}/ (or encoder/layers/ scanned)
    attention/query/{kernel [D,H,K], bias [H,K]}   ...layer.{i}.attention.self.query
    attention/key/..., attention/value/...         ...attention.self.key / .value
    attention/out/{kernel [H,K,D], bias [D]}       ...attention.output.dense
    attention_norm/{scale,bias}                    ...attention.output.LayerNorm
    mlp/wi/{kernel [D,F], bias [F]}                ...intermediate.dense
    mlp/wo/{kernel [F,D], bias [D]}                ...output.dense
    mlp_norm/{scale,bias}                          ...output.LayerNorm
  final_norm/{scale,bias}            (norm_placement="pre" only; BERT has none)
  mlm_head/transform/{kernel [D,D], bias}          cls.predictions.transform.dense
  mlm_head/transform_norm/{scale,bias}             cls.predictions.transform.LayerNorm
  mlm_head/output_bias [V]                         cls.predictions.bias
  mlm_head/output/kernel [D, V]      (tie_embeddings=False only; BERT ties to word_embeddings)
  pooler/{kernel [D,D], bias}                      bert.pooler.dense
  nsp_head/{kernel [D,2], bias [2]}                cls.seq_relationship
Hugging Face's Flax checkpoints store every kernel as [in, out] like ours, so they load
by renaming alone except that q/k/v/out kernels are viewed with the heads axis split
out ([D, H*K] <-> [D, H, K]); PyTorch checkpoints also transpose each Linear weight.

Not reproduced: BERT's dropout on attention probabilities (dropout here acts on the
embeddings and each sub-layer's output), which only matters when training with dropout.

Logical names beyond the shared set: ("type_vocab", "embed") for the token-type
table, ("embed", "embed_out") for the D x D head kernels (the second D must not
reuse "embed": one mesh axis cannot shard two dims), ("embed", "classes") for NSP.
Names absent from the rules stay replicated.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm.attention import make_attention_mask, sinusoidal_embedding
from lm.config import ModelConfig
from lm.layers import BLD, GATED_ACTIVATIONS, NORMS, Einsum, Embed, activation, fan_in_init, param_dtype
from lm.transformer import TransformerStack, default_positions, stack_layer_params

NSP_CLASSES = 2  # label 0: B follows A (IsNext); 1: B is from another document


def head_activation(cfg: ModelConfig):
  # A gated MLP has no single activation; its encoder's heads use tanh-GELU.
  return activation("gelu" if cfg.mlp_activation in GATED_ACTIVATIONS else cfg.mlp_activation)


class MLMHead(nn.Module):
  """dense -> activation -> norm -> logits over the vocabulary, plus a vocabulary bias."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLD, embed: Embed):
    cfg = self.cfg
    d, v = cfg.d_model, cfg.vocab_size
    h_BLD = Einsum((d, d), ("embed", "embed_out"), "bld,de->ble", fan_in_init(), cfg,
                   name="transform")(x_BLD)
    h_BLD = NORMS[cfg.norm](cfg, name="transform_norm")(head_activation(cfg)(h_BLD))
    h_BLD = nn.with_logical_constraint(h_BLD, BLD)
    if cfg.tie_embeddings:
      logits_BLV = embed.attend(h_BLD)
    else:  # its bias is output_bias below, whatever cfg.use_bias says
      logits_BLV = Einsum((d, v), ("embed", "vocab"), "bld,dv->blv", fan_in_init(), cfg,
                          bias_dims=0, name="output")(h_BLD)
    bias_V = self.param("output_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                        (v,), param_dtype(cfg))
    logits_BLV = logits_BLV.astype(jnp.float32) + bias_V.astype(jnp.float32)
    return nn.with_logical_constraint(logits_BLV, ("batch", "length", "act_vocab"))


class EncoderLM(nn.Module):
  """BERT-style encoder with MLM and NSP heads (see the module docstring)."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.token_embed = Embed(cfg, cfg.vocab_size)
    if cfg.position == "learned":
      self.pos_embed = Embed(cfg, cfg.max_len, ("pos", "embed"))
    if cfg.type_vocab_size:
      self.type_embed = Embed(cfg, cfg.type_vocab_size, ("type_vocab", "embed"))
    if cfg.embed_norm:
      self.embed_norm = NORMS[cfg.norm](cfg)
    self.encoder = TransformerStack(cfg, bidirectional_bias=True)
    if cfg.norm_placement == "pre":
      self.final_norm = NORMS[cfg.norm](cfg)
    self.mlm_head = MLMHead(cfg)
    d = cfg.d_model
    self.pooler = Einsum((d, d), ("embed", "embed_out"), "bld,de->ble", fan_in_init(), cfg)
    self.nsp_head = Einsum((d, NSP_CLASSES), ("embed", "classes"), "bld,dc->blc", fan_in_init(), cfg)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def encode(self, tokens_BL: jax.Array, positions_BL: Optional[jax.Array] = None,
             segment_ids_BL: Optional[jax.Array] = None,
             token_types_BL: Optional[jax.Array] = None, deterministic: bool = True) -> jax.Array:
    """Final hidden states [B, L, D]; every token sees its whole segment (no causality)."""
    cfg = self.cfg
    positions_BL, segment_ids_BL = default_positions(tokens_BL, positions_BL, segment_ids_BL)
    l = tokens_BL.shape[1]
    x_BLD = self.token_embed(tokens_BL)
    if cfg.position == "learned":
      if l > cfg.max_len:
        raise ValueError(f"sequence length {l} exceeds model.max_len={cfg.max_len} "
                         "(the learned position table); raise model.max_len")
      x_BLD = x_BLD + self.pos_embed(positions_BL)
    elif cfg.position == "sinusoidal":
      x_BLD = x_BLD + sinusoidal_embedding(positions_BL, cfg.d_model).astype(x_BLD.dtype)
    if cfg.type_vocab_size:
      if token_types_BL is None:
        token_types_BL = jnp.zeros_like(tokens_BL)
      x_BLD = x_BLD + self.type_embed(token_types_BL)
    if cfg.embed_norm:
      x_BLD = self.embed_norm(x_BLD)
    if cfg.dropout_rate > 0 and not deterministic:
      x_BLD = self.dropout(x_BLD, deterministic=False)
    x_BLD = nn.with_logical_constraint(x_BLD, BLD)
    mask_B1LS = make_attention_mask(segment_ids_BL, segment_ids_BL, causal=False)
    x_BLD = self.encoder(x_BLD, positions_BL, mask_B1LS, deterministic=deterministic)
    if cfg.norm_placement == "pre":
      x_BLD = self.final_norm(x_BLD)
    return x_BLD

  def __call__(self, tokens_BL: jax.Array, positions_BL: Optional[jax.Array] = None,
               segment_ids_BL: Optional[jax.Array] = None,
               token_types_BL: Optional[jax.Array] = None,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """(MLM logits [B, L, V], NSP logits [B, L, 2]), float32."""
    x_BLD = self.encode(tokens_BL, positions_BL, segment_ids_BL, token_types_BL, deterministic)
    mlm_logits_BLV = self.mlm_head(x_BLD, self.token_embed)
    pooled_BLD = jnp.tanh(self.pooler(x_BLD))
    nsp_logits_BLC = self.nsp_head(pooled_BLD).astype(jnp.float32)
    return mlm_logits_BLV, nsp_logits_BLC


# ---------------------------------------------------------------- Hugging Face names

def hf_bert_names(cfg: ModelConfig) -> dict[tuple[str, ...], str]:
  """Our unrolled param path -> Hugging Face BertForPreTraining (PyTorch) parameter name."""
  names = {
      ("token_embed", "embedding"): "bert.embeddings.word_embeddings.weight",
      ("pos_embed", "embedding"): "bert.embeddings.position_embeddings.weight",
      ("type_embed", "embedding"): "bert.embeddings.token_type_embeddings.weight",
      ("embed_norm", "scale"): "bert.embeddings.LayerNorm.weight",
      ("embed_norm", "bias"): "bert.embeddings.LayerNorm.bias",
      ("mlm_head", "transform", "kernel"): "cls.predictions.transform.dense.weight",
      ("mlm_head", "transform", "bias"): "cls.predictions.transform.dense.bias",
      ("mlm_head", "transform_norm", "scale"): "cls.predictions.transform.LayerNorm.weight",
      ("mlm_head", "transform_norm", "bias"): "cls.predictions.transform.LayerNorm.bias",
      ("mlm_head", "output_bias"): "cls.predictions.bias",
      ("pooler", "kernel"): "bert.pooler.dense.weight",
      ("pooler", "bias"): "bert.pooler.dense.bias",
      ("nsp_head", "kernel"): "cls.seq_relationship.weight",
      ("nsp_head", "bias"): "cls.seq_relationship.bias",
  }
  per_layer = {
      ("attention", "query"): "attention.self.query",
      ("attention", "key"): "attention.self.key",
      ("attention", "value"): "attention.self.value",
      ("attention", "out"): "attention.output.dense",
      ("mlp", "wi"): "intermediate.dense",
      ("mlp", "wo"): "output.dense",
  }
  for i in range(cfg.num_layers):
    prefix = f"bert.encoder.layer.{i}."
    for ours, theirs in per_layer.items():
      names[("encoder", f"layers_{i}") + ours + ("kernel",)] = prefix + theirs + ".weight"
      names[("encoder", f"layers_{i}") + ours + ("bias",)] = prefix + theirs + ".bias"
    for ours, theirs in (("attention_norm", "attention.output.LayerNorm"),
                         ("mlp_norm", "output.LayerNorm")):
      names[("encoder", f"layers_{i}", ours, "scale")] = prefix + theirs + ".weight"
      names[("encoder", f"layers_{i}", ours, "bias")] = prefix + theirs + ".bias"
  return names


def hf_bert_to_params(state: Mapping[str, Any], cfg: ModelConfig) -> dict:
  """A Hugging Face BertForPreTraining PyTorch state dict (name -> array) -> our params.

  Renames every weight, transposes Linear weights ([out, in] -> [in, out]) and views
  the attention kernels with a heads axis; stacks layers when cfg.scan_layers.
  Raises KeyError naming any weight the config needs that `state` lacks.
  """
  bert_arch = dict(norm_placement="post", norm="layernorm", embed_norm=True, use_bias=True,
                   mlp_activation="gelu_exact", position="learned", tie_embeddings=True,
                   num_kv_heads=cfg.num_heads if cfg.num_kv_heads else 0)
  wrong = {f: getattr(cfg, f) for f, v in bert_arch.items() if getattr(cfg, f) != v}
  if wrong or not cfg.type_vocab_size or cfg.family != "encoder":
    raise ValueError(f"the model config is not BERT's architecture (differs in {wrong}, "
                     f"family={cfg.family!r}, type_vocab_size={cfg.type_vocab_size}); "
                     "see the lm/bert.py docstring for BERT's fields")
  from lm.interop.bert import tensor_specs  # the layouts live with the safetensors converter
  from lm.interop.common import layer_paths, set_path, storage_shapes, to_ours
  shapes = {p: s for path, shape in storage_shapes(cfg).items() for p, s in layer_paths(path, shape)}
  params: dict = {}
  for path, spec in tensor_specs(cfg).items():
    if spec.name not in state:
      raise KeyError(f"{spec.name} is missing from the checkpoint (needed for params/{'/'.join(path)})")
    set_path(params, path, to_ours(np.asarray(state[spec.name]), spec, shapes[path]))
  if cfg.scan_layers:
    params = stack_layer_params(params, cfg.num_layers)
  return params
