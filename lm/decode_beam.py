"""Beam search over the KV cache (decoder-only and encoder-decoder), one compiled loop.

Each step scores the 2W best continuations of the W alive beams. A candidate that
ends in a stop token joins the finished set only if it ranks within the top W
(so beam 1 is exactly greedy), scored logp / lp(len) with the GNMT length penalty
lp(n) = ((5 + n) / 6)^alpha (alpha = 0: plain log-probability); the rest continue.
A row stops when its best finished score beats the best any alive beam can still
reach; at the end alive beams compete with finished ones.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lm import decode

NEG = -1e30


def length_penalty(n, alpha):
  return ((5.0 + n) / 6.0) ** alpha


def _reorder(cache, ctx, flat_idx):
  cache = dict(cache, k=jnp.take(cache["k"], flat_idx, axis=1),
               v=jnp.take(cache["v"], flat_idx, axis=1),
               segment_ids=jnp.take(cache["segment_ids"], flat_idx, axis=0),
               positions=jnp.take(cache["positions"], flat_idx, axis=0))
  if ctx is not None:
    ctx = tuple(jnp.take(x, flat_idx, axis=0) for x in ctx)
  return cache, ctx


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "beam_size"))
def beam_search(params, tokens_BP, segs_BP, pos_BP, stop_S, alpha, *, cfg, max_new_tokens: int,
                beam_size: int):
  """The best sequence per row [B, N] (0 after the stop token)."""
  model = decode._model(cfg)
  step = decode._step_fn(model, cfg)
  b, w, n = tokens_BP.shape[0], beam_size, max_new_tokens
  cache_len = n + (1 if cfg.family == "encoder_decoder" else tokens_BP.shape[1])
  logits_BV, cache, ctx, pos_B = decode._prefill(model, cfg, params, tokens_BP, segs_BP, pos_BP,
                                                 cache_len, cfg.decoder_start_id)
  v = logits_BV.shape[-1]
  rep = jnp.repeat(jnp.arange(b), w)
  cache, ctx = _reorder(cache, ctx, rep)
  logits = jnp.take(logits_BV, rep, axis=0)
  pos = jnp.take(pos_B, rep, axis=0)
  alive_logp = jnp.where(jnp.arange(w) == 0, 0.0, NEG)[None].repeat(b, 0)  # one live beam at first
  alive_seq = jnp.zeros((b, w, n), jnp.int32)
  fin_seq = jnp.zeros((b, w, n), jnp.int32)
  fin_score = jnp.full((b, w), NEG)
  max_lp = length_penalty(jnp.float32(n), alpha)

  def cond(s):
    t, _, _, _, _, alive_logp, _, _, fin_score = s
    # alive logp only falls; dividing by the largest penalty bounds what it can reach
    best_alive = jnp.max(alive_logp, -1) / jnp.where(alpha > 0, max_lp, 1.0)
    return (t < n) & ~jnp.all(jnp.max(fin_score, -1) >= best_alive)

  def body(s):
    t, logits, cache, ctx, pos, alive_logp, alive_seq, fin_seq, fin_score = s
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1).reshape(b, w, v)
    cand = (alive_logp[:, :, None] + logp).reshape(b, w * v)
    scores, idx = jax.lax.top_k(cand, 2 * w)  # [B, 2W], sorted
    parent, tok = idx // v, (idx % v).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive_seq, parent[:, :, None], axis=1)
    seqs = jax.lax.dynamic_update_index_in_dim(seqs, tok, t, axis=2)
    is_stop = jnp.isin(tok, stop_S)
    new_fin = jnp.where(is_stop & (jnp.arange(2 * w) < w),
                        scores / length_penalty(t + 1.0, alpha), NEG)
    all_fin = jnp.concatenate([fin_score, new_fin], 1)
    all_fin_seq = jnp.concatenate([fin_seq, seqs], 1)
    fin_score, pick = jax.lax.top_k(all_fin, w)
    fin_seq = jnp.take_along_axis(all_fin_seq, pick[:, :, None], axis=1)
    alive_scores = jnp.where(is_stop, NEG, scores)
    alive_logp, keep = jax.lax.top_k(alive_scores, w)
    alive_seq = jnp.take_along_axis(seqs, keep[:, :, None], axis=1)
    next_tok = jnp.take_along_axis(tok, keep, 1).reshape(b * w)
    flat = (jnp.arange(b)[:, None] * w + jnp.take_along_axis(parent, keep, 1)).reshape(b * w)
    cache, ctx = _reorder(cache, ctx, flat)
    pos = jnp.take(pos, flat)
    out, cache = step(params, next_tok[:, None], pos[:, None], jnp.ones((b * w, 1), jnp.int32),
                      cache, ctx)
    return t + 1, out[:, -1], cache, ctx, pos + 1, alive_logp, alive_seq, fin_seq, fin_score

  s = (jnp.zeros((), jnp.int32), logits, cache, ctx, pos, alive_logp, alive_seq, fin_seq,
       fin_score)
  t, _, _, _, _, alive_logp, alive_seq, fin_seq, fin_score = jax.lax.while_loop(cond, body, s)
  alive_final = jnp.where(alive_logp > NEG / 2, alive_logp / length_penalty(t * 1.0, alpha), NEG)
  scores = jnp.concatenate([fin_score, alive_final], 1)
  seqs = jnp.concatenate([fin_seq, alive_seq], 1)
  best = jnp.argmax(scores, 1)
  return jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0]
