"""T5 v1.0 / v1.1 (T5ForConditionalGeneration, also mT5) <-> our encoder-decoder model.

T5 is our EncoderDecoderLM with position="relative" (one bias table per stack, in
HF's first block), norm="rmsnorm" (T5LayerNorm: no mean, no bias), pre-norm, no
biases anywhere, scale_attention=False (1/sqrt(K) is folded into T5's init),
decoder_start_id = pad (0). v1.0: ReLU MLP, tied output with features scaled by
d_model**-0.5 (output_scale). v1.1: gated tanh-GELU ("geglu": wi_0 gate, wi_1 up),
and either an untied lm_head or (transformers >= 5, scale_decoder_outputs=false)
a tied one without scaling.
"""
from __future__ import annotations

import re

from lm.config import ModelConfig
from lm.interop.common import Spec, hf_get, linear, prefixed, refuse, require, require_mha

ARCH = "T5"
MODEL_TYPES = ("t5", "mt5")
# (gated, HF activation) -> our mlp_activation
ACTIVATIONS = {(False, "relu"): "relu", (True, "gelu_new"): "geglu", (True, "silu"): "swiglu", (False, "gelu_new"): "gelu", (False, "gelu"): "gelu_exact"}
_TO_HF_FF = {"relu": "relu", "geglu": "gated-gelu", "swiglu": "gated-silu", "gelu": "gelu_new",
             "gelu_exact": "gelu"}
IGNORED = re.compile(r"^(encoder|decoder)\.embed_tokens\.weight$")  # copies of shared.weight
# T5 files always name tensors in full
canonical = prefixed("", ())


def _activation(hf: dict) -> str:
  ff = hf.get("feed_forward_proj", "relu")
  parts = ff.split("-")
  gated = parts[0] == "gated" and len(parts) == 2
  act = "gelu_new" if ff == "gated-gelu" else parts[-1]  # HF maps gated-gelu to tanh GELU
  if (gated, act) not in ACTIVATIONS or (len(parts) == 2 and not gated) or len(parts) > 2:
    refuse(ARCH, "feed_forward_proj", ff, ", ".join(sorted(set(_TO_HF_FF.values()))))
  return ACTIVATIONS[(gated, act)]


def config_from_hf(hf: dict, names: set[str]) -> ModelConfig:
  if hf.get("is_encoder_decoder", True) is not True:
    refuse(ARCH, "is_encoder_decoder", hf["is_encoder_decoder"], "true")
  d = hf_get(hf, "d_model", arch=ARCH)
  heads, d_kv = hf_get(hf, "num_heads", arch=ARCH), hf_get(hf, "d_kv", arch=ARCH)
  layers = hf_get(hf, "num_layers", arch=ARCH)
  dec_layers = hf.get("num_decoder_layers") or layers
  tied = "lm_head.weight" not in names
  # transformers < 5: scaled iff tied; >= 5 records it separately
  scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
  start = hf.get("decoder_start_token_id")
  return ModelConfig(
      family="encoder_decoder", vocab_size=hf_get(hf, "vocab_size", arch=ARCH), d_model=d,
      num_layers=layers, num_decoder_layers=0 if dec_layers == layers else dec_layers,
      num_heads=heads, head_dim=0 if d_kv * heads == d else d_kv,
      mlp_dim=hf_get(hf, "d_ff", arch=ARCH), max_len=int(hf.get("n_positions") or 512),
      position="relative", norm="rmsnorm", norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
      mlp_activation=_activation(hf), norm_placement="pre", use_bias=False,
      tie_embeddings=tied, scale_attention=False, output_scale=d ** -0.5 if scaled else 1.0,
      relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
      relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
      decoder_start_id=int(start if start is not None else hf.get("pad_token_id") or 0))


def config_to_hf(cfg: ModelConfig, base: dict) -> dict:
  require(cfg, ARCH, family="encoder_decoder", position="relative", norm="rmsnorm",
          norm_placement="pre", use_bias=False, embed_norm=False, scale_attention=False)
  require_mha(cfg, ARCH, any_head_dim=True)
  if cfg.output_scale not in (1.0, cfg.d_model ** -0.5):
    require(cfg, ARCH, output_scale=cfg.d_model ** -0.5)
  out = {k: v for k, v in base.items() if k not in ("dense_act_fn", "is_gated_act")}
  out.update(architectures=["T5ForConditionalGeneration"], model_type=base.get("model_type", "t5"),
             vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.resolved_head_dim,
             d_ff=cfg.mlp_dim, num_layers=cfg.num_layers,
             num_decoder_layers=cfg.num_decoder_layers or cfg.num_layers, num_heads=cfg.num_heads,
             relative_attention_num_buckets=cfg.relative_attention_num_buckets,
             relative_attention_max_distance=cfg.relative_attention_max_distance,
             layer_norm_epsilon=cfg.norm_eps, feed_forward_proj=_TO_HF_FF[cfg.mlp_activation],
             tie_word_embeddings=cfg.tie_embeddings,
             scale_decoder_outputs=cfg.output_scale != 1.0, is_encoder_decoder=True,
             decoder_start_token_id=cfg.decoder_start_id)
  return out



def _attention(prefix: str) -> dict[tuple, Spec]:
  return {("query", "kernel"): linear(prefix + "q.weight"), ("key", "kernel"): linear(prefix + "k.weight"),
          ("value", "kernel"): linear(prefix + "v.weight"),
          ("out", "kernel"): linear(prefix + "o.weight", in_dims=2)}


def _mlp(prefix: str, cfg: ModelConfig) -> dict[tuple, Spec]:
  if cfg.mlp_activation in ("geglu", "swiglu"):
    ins = {("wi_gate", "kernel"): linear(prefix + "wi_0.weight"),
           ("wi_up", "kernel"): linear(prefix + "wi_1.weight")}
  else:
    ins = {("wi", "kernel"): linear(prefix + "wi.weight")}
  return {**ins, ("wo", "kernel"): linear(prefix + "wo.weight")}


def tensor_specs(cfg: ModelConfig) -> dict[tuple, Spec]:
  specs = {("token_embed", "embedding"): Spec("shared.weight"),
           ("encoder_norm", "scale"): Spec("encoder.final_layer_norm.weight"),
           ("decoder_norm", "scale"): Spec("decoder.final_layer_norm.weight")}
  if not cfg.tie_embeddings:
    specs[("output", "kernel")] = linear("lm_head.weight")
  # (stack, depth, [(our sub-layer, its norm, HF attention module or None for the MLP)])
  stacks = (("encoder", cfg.num_layers, [("attention", "attention_norm", "SelfAttention"),
                                         ("mlp", "mlp_norm", None)]),
            ("decoder", cfg.num_decoder_layers or cfg.num_layers,
             [("attention", "attention_norm", "SelfAttention"),
              ("cross_attention", "cross_attention_norm", "EncDecAttention"),
              ("mlp", "mlp_norm", None)]))
  for stack, depth, sublayers in stacks:
    specs[(stack, "relpos_bias", "embedding")] = Spec(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    for i in range(depth):
      for j, (module, norm, attn) in enumerate(sublayers):
        prefix = f"{stack}.block.{i}.layer.{j}."
        ours = (stack, f"layers_{i}")
        specs[ours + (norm, "scale")] = Spec(prefix + "layer_norm.weight")
        inner = _attention(prefix + attn + ".") if attn else _mlp(prefix + "DenseReluDense.", cfg)
        for path, spec in inner.items():
          specs[ours + (module,) + path] = spec
  return specs
