"""GPT-2 (GPT2LMHeadModel) <-> our decoder-only model.

GPT-2 is our DecoderLM with position="learned", norm="layernorm" (eps 1e-5),
norm_placement="pre", use_bias=True, mlp_activation="gelu" (tanh, "gelu_new"),
a final norm and tied output. Its Conv1D weights are already [in, out]; the fused
c_attn [D, 3D] holds query, key and value side by side.
"""
from __future__ import annotations

import re

from lm.config import ModelConfig
from lm.interop.common import Spec, hf_get, prefixed, refuse, require, require_mha

ARCH = "GPT-2"
MODEL_TYPES = ("gpt2",)
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact",
               "relu": "relu"}
_TO_HF_ACT = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}
IGNORED = re.compile(r"(^lm_head\.weight$|\.attn\.(masked_)?bias$)")  # tied copy, mask buffers
# GPT2Model files (and the original hub checkpoints) lack the `transformer.` prefix
canonical = prefixed("transformer.", ("transformer.", "lm_head."))


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
  for field in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
    if hf.get(field):
      refuse(ARCH, field, hf[field], "false")
  if hf.get("tie_word_embeddings", True) is False:
    refuse(ARCH, "tie_word_embeddings", False, "true")
  act = hf.get("activation_function", "gelu_new")
  if act not in ACTIVATIONS:
    refuse(ARCH, "activation_function", act, ", ".join(ACTIVATIONS))
  d = hf_get(hf, "n_embd", arch=ARCH)
  return ModelConfig(
      family="decoder", vocab_size=hf_get(hf, "vocab_size", arch=ARCH), d_model=d,
      num_layers=hf_get(hf, "n_layer", arch=ARCH), num_heads=hf_get(hf, "n_head", arch=ARCH),
      mlp_dim=hf.get("n_inner") or 4 * d, max_len=hf_get(hf, "n_positions", arch=ARCH),
      position="learned", norm="layernorm", norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
      mlp_activation=ACTIVATIONS[act], tie_embeddings=True, use_bias=True, norm_placement="pre",
      scale_attention=bool(hf.get("scale_attn_weights", True)))


def config_to_hf(cfg: ModelConfig, base: dict) -> dict:
  require(cfg, ARCH, family="decoder", position="learned", norm="layernorm", norm_placement="pre",
          use_bias=True, tie_embeddings=True, embed_norm=False, type_vocab_size=0,
          output_scale=1.0)
  require_mha(cfg, ARCH)
  if cfg.mlp_activation not in _TO_HF_ACT:
    require(cfg, ARCH, mlp_activation="gelu")
  out = {k: v for k, v in base.items() if k not in ("n_inner", "scale_attn_weights")}
  out.update(architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=cfg.vocab_size,
             n_embd=cfg.d_model, n_layer=cfg.num_layers, n_head=cfg.num_heads,
             n_inner=cfg.mlp_dim, n_positions=cfg.max_len, layer_norm_epsilon=cfg.norm_eps,
             activation_function=_TO_HF_ACT[cfg.mlp_activation],
             scale_attn_weights=cfg.scale_attention, tie_word_embeddings=True,
             scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)
  if "n_ctx" in base:  # older configs repeat n_positions
    out["n_ctx"] = cfg.max_len
  return out



def tensor_specs(cfg: ModelConfig) -> dict[tuple, Spec]:
  specs = {
      ("token_embed", "embedding"): Spec("transformer.wte.weight"),
      ("pos_embed", "embedding"): Spec("transformer.wpe.weight"),
      ("final_norm", "scale"): Spec("transformer.ln_f.weight"),
      ("final_norm", "bias"): Spec("transformer.ln_f.bias"),
  }
  for i in range(cfg.num_layers):
    ours, h = ("decoder", f"layers_{i}"), f"transformer.h.{i}."
    for j, proj in enumerate(("query", "key", "value")):
      specs[ours + ("attention", proj, "kernel")] = Spec(h + "attn.c_attn.weight", "kernel", part=(j, 3))
      specs[ours + ("attention", proj, "bias")] = Spec(h + "attn.c_attn.bias", "flat", part=(j, 3))
    for module, theirs, in_dims in (("attention/out", "attn.c_proj", 2), ("mlp/wi", "mlp.c_fc", 1),
                                    ("mlp/wo", "mlp.c_proj", 1)):
      path = ours + tuple(module.split("/"))
      specs[path + ("kernel",)] = Spec(h + theirs + ".weight", "kernel", in_dims=in_dims)
      specs[path + ("bias",)] = Spec(h + theirs + ".bias", "flat")
    for norm, theirs in (("attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
      specs[ours + (norm, "scale")] = Spec(h + theirs + ".weight")
      specs[ours + (norm, "bias")] = Spec(h + theirs + ".bias")
  return specs
