"""Encoder-decoder model (T5-style): shared embeddings, encoder, decoder with cross-attention.

`EncoderDecoderLM(cfg)(encoder_tokens, decoder_tokens, ...)` returns float32
logits [B, Ld, V] over the decoder positions. `encode` and `decode` are exposed
separately (`model.apply(vars, ..., method="encode")`) so decoding can run the
encoder once.

Packing: both sides carry segment ids; decoder segment s attends (causally) to
itself and cross-attends to encoder segment s only, never to encoder padding
(segment id 0). Positions restart at 0 per segment on each side.

Positions: "rope" (self-attention only; cross-attention has no shared position
axis), "learned" (one table shared by both sides, like the token table),
"sinusoidal", or "relative": T5's bucketed bias, bidirectional buckets in the
encoder and past-only buckets in the decoder, one table per stack.

Param tree (`params/...`):
  token_embed/embedding [V, D]              shared by encoder, decoder and (tied) output
  pos_embed/embedding [max_len, D]          position="learned" only
  embed_norm/...                            embed_norm=True only (applied on both sides)
  encoder/layers/... | encoder/layers_{i}/...   bidirectional blocks (lm/transformer.py)
  encoder/relpos_bias/embedding [buckets, H]    position="relative" only
  encoder_norm/...                          norm_placement="pre" only
  decoder/layers/... | decoder/layers_{i}/...   blocks with cross_attention/ and
                                            cross_attention_norm/; num_decoder_layers deep
  decoder/relpos_bias/embedding [buckets, H]    position="relative" only
  decoder_norm/...                          norm_placement="pre" only
  output/kernel [D, V]                      tie_embeddings=False only
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from lm.attention import make_attention_mask, sinusoidal_embedding
from lm.config import ModelConfig
from lm.layers import BLD, NORMS, Einsum, Embed, fan_in_init
from lm.transformer import TransformerStack, default_positions


class EncoderDecoderLM(nn.Module):
  """T5-style sequence-to-sequence model (see the module docstring)."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.token_embed = Embed(cfg, cfg.vocab_size)
    if cfg.position == "learned":
      self.pos_embed = Embed(cfg, cfg.max_len, ("pos", "embed"))
    if cfg.embed_norm:
      self.embed_norm = NORMS[cfg.norm](cfg)
    self.encoder = TransformerStack(cfg, bidirectional_bias=True)
    self.decoder = TransformerStack(cfg, num_layers=cfg.num_decoder_layers or cfg.num_layers,
                                    cross_attention=True, bidirectional_bias=False, causal=True)
    if cfg.norm_placement == "pre":
      self.encoder_norm = NORMS[cfg.norm](cfg)
      self.decoder_norm = NORMS[cfg.norm](cfg)
    if not cfg.tie_embeddings:
      self.output = Einsum((cfg.d_model, cfg.vocab_size), ("embed", "vocab"), "bld,dv->blv",
                           fan_in_init(), cfg, bias_dims=0)
    self.dropout = nn.Dropout(cfg.dropout_rate)

  def _embed(self, tokens_BL, positions_BL, deterministic: bool):
    cfg = self.cfg
    x_BLD = self.token_embed(tokens_BL)
    if cfg.position == "learned":
      if tokens_BL.shape[1] > cfg.max_len:
        raise ValueError(f"sequence length {tokens_BL.shape[1]} exceeds model.max_len="
                         f"{cfg.max_len} (the learned position table); raise model.max_len")
      x_BLD = x_BLD + self.pos_embed(positions_BL)
    elif cfg.position == "sinusoidal":
      x_BLD = x_BLD + sinusoidal_embedding(positions_BL, cfg.d_model).astype(x_BLD.dtype)
    if cfg.embed_norm:
      x_BLD = self.embed_norm(x_BLD)
    if cfg.dropout_rate > 0 and not deterministic:
      x_BLD = self.dropout(x_BLD, deterministic=False)
    return nn.with_logical_constraint(x_BLD, BLD)

  def encode(self, encoder_tokens_BS: jax.Array, encoder_positions_BS: Optional[jax.Array] = None,
             encoder_segment_ids_BS: Optional[jax.Array] = None,
             deterministic: bool = True) -> jax.Array:
    """Encoder outputs [B, S, D] (bidirectional within each segment)."""
    positions_BS, segment_ids_BS = default_positions(
        encoder_tokens_BS, encoder_positions_BS, encoder_segment_ids_BS)
    x_BSD = self._embed(encoder_tokens_BS, positions_BS, deterministic)
    mask_B1SS = make_attention_mask(segment_ids_BS, segment_ids_BS, causal=False)
    x_BSD = self.encoder(x_BSD, positions_BS, mask_B1SS, deterministic=deterministic)
    if self.cfg.norm_placement == "pre":
      x_BSD = self.encoder_norm(x_BSD)
    return x_BSD

  def decode(self, encoded_BSD: jax.Array, encoder_segment_ids_BS: Optional[jax.Array],
             decoder_tokens_BL: jax.Array, decoder_positions_BL: Optional[jax.Array] = None,
             decoder_segment_ids_BL: Optional[jax.Array] = None,
             deterministic: bool = True, cache: Optional[dict] = None):
    """Decoder logits [B, L, V], float32, given the encoder outputs.

    With `cache` (a decoder self-attention KV cache, see lm/models.py DecoderLM)
    returns (logits, the updated cache); the encoder outputs are reused as given.
    """
    from lm.models import cache_mask, cache_write  # models import this module
    cfg = self.cfg
    positions_BL, segment_ids_BL = default_positions(
        decoder_tokens_BL, decoder_positions_BL, decoder_segment_ids_BL)
    if encoder_segment_ids_BS is None:
      encoder_segment_ids_BS = jnp.ones(encoded_BSD.shape[:2], jnp.int32)
    x_BLD = self._embed(decoder_tokens_BL, positions_BL, deterministic)
    cross_mask_B1LS = make_attention_mask(segment_ids_BL, encoder_segment_ids_BS, causal=False)
    if cache is None:
      self_mask_B1LL = make_attention_mask(segment_ids_BL, segment_ids_BL, causal=True)
      x_BLD = self.decoder(x_BLD, positions_BL, self_mask_B1LL, encoded_BSD, cross_mask_B1LS,
                           deterministic=deterministic)
    else:
      cache = cache_write(cache, segment_ids_BL, positions_BL)
      x_BLD, (k, v) = self.decoder(x_BLD, positions_BL, cache_mask(cache, segment_ids_BL),
                                   encoded_BSD, cross_mask_B1LS, cache_kv=(cache["k"], cache["v"]),
                                   cache_index=cache["index"], kv_positions_BS=cache["positions"])
      cache = dict(cache, k=k, v=v, index=cache["index"] + decoder_tokens_BL.shape[1])
    if cfg.norm_placement == "pre":
      x_BLD = self.decoder_norm(x_BLD)
    if cfg.output_scale != 1.0:
      x_BLD = x_BLD * jnp.asarray(cfg.output_scale, x_BLD.dtype)
    if cfg.tie_embeddings:
      logits_BLV = self.token_embed.attend(x_BLD)
    else:
      logits_BLV = self.output(x_BLD)
    logits_BLV = nn.with_logical_constraint(logits_BLV.astype(jnp.float32),
                                            ("batch", "length", "act_vocab"))
    return logits_BLV if cache is None else (logits_BLV, cache)

  def __call__(self, encoder_tokens_BS: jax.Array, decoder_tokens_BL: jax.Array,
               encoder_positions_BS: Optional[jax.Array] = None,
               encoder_segment_ids_BS: Optional[jax.Array] = None,
               decoder_positions_BL: Optional[jax.Array] = None,
               decoder_segment_ids_BL: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    encoded_BSD = self.encode(encoder_tokens_BS, encoder_positions_BS, encoder_segment_ids_BS,
                              deterministic)
    if encoder_segment_ids_BS is None:
      encoder_segment_ids_BS = jnp.ones(encoder_tokens_BS.shape, jnp.int32)
    return self.decode(encoded_BSD, encoder_segment_ids_BS, decoder_tokens_BL,
                       decoder_positions_BL, decoder_segment_ids_BL, deterministic)
