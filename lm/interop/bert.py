"""BERT (BertForPreTraining, BertForMaskedLM, BertModel) <-> our encoder-only model.

The name mapping is lm/bert.py's `hf_bert_names`; here each name gets its layout
(torch Linear weights are [out, in]; attention kernels gain a heads axis). The MLM
and NSP heads are read when the file has them; a head class without them (BertModel,
BertForMaskedLM) leaves those params at zero, listed in the WORKDIR's manifest.
Export always writes BertForPreTraining.
"""
from __future__ import annotations

import re

from lm.bert import hf_bert_names
from lm.config import ModelConfig
from lm.interop.common import Spec, hf_get, linear, prefixed, refuse, require, require_mha

ARCH = "BERT"
MODEL_TYPES = ("bert",)
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
               "relu": "relu"}
_TO_HF_ACT = {v: k for k, v in ACTIVATIONS.items() if k != "gelu_pytorch_tanh"}
HEADS = ("mlm_head", "pooler", "nsp_head")
# position_ids buffers; the decoder's weight (tied to the word embeddings) and bias (a copy)
IGNORED = re.compile(r"(position_ids$|^cls\.predictions\.decoder\.(weight|bias)$)")
# BertModel files lack the head classes' `bert.` prefix
canonical = prefixed("bert.", ("bert.", "cls."))


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
  del names
  for field, ok in (("position_embedding_type", "absolute"), ("is_decoder", False),
                    ("add_cross_attention", False)):
    if hf.get(field, ok) not in (ok, None):
      refuse(ARCH, field, hf[field], repr(ok))
  if hf.get("tie_word_embeddings", True) is False:
    refuse(ARCH, "tie_word_embeddings", False, "true")
  act = hf.get("hidden_act", "gelu")
  if act not in ACTIVATIONS:
    refuse(ARCH, "hidden_act", act, ", ".join(ACTIVATIONS))
  return ModelConfig(
      family="encoder", vocab_size=hf_get(hf, "vocab_size", arch=ARCH),
      d_model=hf_get(hf, "hidden_size", arch=ARCH), num_layers=hf_get(hf, "num_hidden_layers", arch=ARCH),
      num_heads=hf_get(hf, "num_attention_heads", arch=ARCH),
      mlp_dim=hf_get(hf, "intermediate_size", arch=ARCH),
      max_len=hf_get(hf, "max_position_embeddings", arch=ARCH), position="learned",
      norm="layernorm", norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
      mlp_activation=ACTIVATIONS[act], norm_placement="post", use_bias=True, embed_norm=True,
      type_vocab_size=hf_get(hf, "type_vocab_size", arch=ARCH), tie_embeddings=True)


def config_to_hf(cfg: ModelConfig, base: dict) -> dict:
  require(cfg, ARCH, family="encoder", position="learned", norm="layernorm",
          norm_placement="post", use_bias=True, embed_norm=True, tie_embeddings=True,
          output_scale=1.0, scale_attention=True)
  require_mha(cfg, ARCH)
  if cfg.mlp_activation not in _TO_HF_ACT:
    require(cfg, ARCH, mlp_activation="gelu_exact")
  if not cfg.type_vocab_size:
    require(cfg, ARCH, type_vocab_size=2)
  out = dict(base)
  out.update(architectures=["BertForPreTraining"], model_type="bert", vocab_size=cfg.vocab_size,
             hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
             num_attention_heads=cfg.num_heads, intermediate_size=cfg.mlp_dim,
             max_position_embeddings=cfg.max_len, layer_norm_eps=cfg.norm_eps,
             hidden_act=_TO_HF_ACT[cfg.mlp_activation], type_vocab_size=cfg.type_vocab_size,
             position_embedding_type="absolute", tie_word_embeddings=True)
  return out



def tensor_specs(cfg: ModelConfig) -> dict[tuple, Spec]:
  specs = {}
  for path, name in hf_bert_names(cfg).items():
    optional = path[0] in HEADS
    leaf, module = path[-1], path[-2]
    if leaf == "kernel":
      specs[path] = linear(name, in_dims=2 if module == "out" else 1, optional=optional)
    elif leaf == "bias" and module in ("query", "key", "value"):
      specs[path] = Spec(name, "flat", optional=optional)
    else:
      specs[path] = Spec(name, optional=optional)
  return specs
