"""Decoding: prefill + KV-cache sampling, beam search, and a Decoder that loads a WORKDIR once.

Decoder-only prompts of different lengths are left-padded to a common length P
(padding has segment id 0, so it is never attended; positions count from each
prompt's first real token), so every row writes its next token into the same
cache slot. The cache holds T = P + max_new_tokens slots; one compiled program
per (batch, P bucket, max_new_tokens). Encoder-decoder prompts go through the
encoder once; the decoder starts from <bos> (as in training, lm/data/spans.py).

Sampling: temperature <= 0 is greedy; top_k (0 = off) and top_p (1 = off) filter
the tempered distribution. Each request has its own key (`fold_in(key(seed),
request index)`, or given), and step t samples with `fold_in(request key, t)`,
so a request's samples do not depend on what else is in the batch.

Stop tokens end a row inside the compiled loop; stop strings are applied to the
decoded text (Decoder.generate_text). `token_mask_fn` (host-side constraints,
e.g. a grammar) switches to a Python loop over a jitted single step.

Completions are returned without the stop token that ended them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm.config import ModelConfig
from lm.layers import compute_dtype

NEG_INF = -1e30  # finite: keeps fully masked rows NaN-free


# ---------------------------------------------------------------- sampling

def filter_logits(logits_BV: jax.Array, temperature, top_k, top_p) -> jax.Array:
  """Tempered logits with tokens outside top-k / the top-p nucleus set to NEG_INF.

  temperature, top_k, top_p are traced scalars (changing them does not recompile).
  """
  v = logits_BV.shape[-1]
  x = logits_BV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
  sorted_BV = jnp.sort(x, axis=-1)[:, ::-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
  kth_B1 = jnp.take_along_axis(sorted_BV, jnp.full((x.shape[0], 1), k - 1), axis=-1)
  # nucleus: keep sorted tokens whose preceding mass is < top_p (the first always stays)
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
  keep_BV = (before_BV < top_p) | (jnp.arange(v) == 0)
  nucleus_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where((x >= kth_B1) & (x >= nucleus_B1), x, NEG_INF)


def sample(logits_BV: jax.Array, keys_B: jax.Array, temperature, top_k, top_p,
           allowed_BV: Optional[jax.Array] = None) -> jax.Array:
  """One token per row; greedy where temperature <= 0. `allowed_BV` masks tokens out."""
  logits_BV = logits_BV.astype(jnp.float32)
  if allowed_BV is not None:
    logits_BV = jnp.where(allowed_BV, logits_BV, NEG_INF)
  greedy_B = jnp.argmax(logits_BV, axis=-1)
  filtered_BV = filter_logits(logits_BV, temperature, top_k, top_p)
  sampled_B = jax.vmap(jax.random.categorical)(keys_B, filtered_BV)
  return jnp.where(temperature <= 0, greedy_B, sampled_B).astype(jnp.int32)


def request_keys(seed: int, n: int, offset: int = 0) -> jax.Array:
  """Key of request i: fold_in(key(seed), offset + i)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(offset, offset + n))


# ---------------------------------------------------------------- batching

def bucket(n: int, multiple: int = 16) -> int:
  """Round a prompt length up (fewer distinct shapes, fewer compilations)."""
  return max(multiple, -(-n // multiple) * multiple)


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0):
  """tokens, segment_ids, positions [B, length] with each prompt right-aligned."""
  b = len(prompts)
  tokens = np.full((b, length), pad_id, np.int32)
  segs = np.zeros((b, length), np.int32)
  pos = np.zeros((b, length), np.int32)
  for i, p in enumerate(prompts):
    n = len(p)
    if n == 0 or n > length:
      raise ValueError(f"prompt {i} has {n} tokens; need 1..{length}")
    tokens[i, length - n:] = p
    segs[i, length - n:] = 1
    pos[i, length - n:] = np.arange(n)
  return tokens, segs, pos


def right_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0):
  """tokens, segment_ids [B, length], prompts left-aligned (encoder inputs)."""
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  segs = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    if len(p) == 0 or len(p) > length:
      raise ValueError(f"prompt {i} has {len(p)} tokens; need 1..{length}")
    tokens[i, :len(p)] = p
    segs[i, :len(p)] = 1
  return tokens, segs


# ---------------------------------------------------------------- the model's step

def decoder_depth(cfg: ModelConfig) -> int:
  if cfg.family == "encoder_decoder":
    return cfg.num_decoder_layers or cfg.num_layers
  return cfg.num_layers


def init_cache(cfg: ModelConfig, batch: int, length: int) -> dict:
  """An empty KV cache of `length` slots (segment id 0 = empty, never attended)."""
  shape = (decoder_depth(cfg), batch, length, cfg.kv_heads, cfg.resolved_head_dim)
  z = jnp.zeros(shape, compute_dtype(cfg))
  return {"k": z, "v": z, "segment_ids": jnp.zeros((batch, length), jnp.int32),
          "positions": jnp.zeros((batch, length), jnp.int32), "index": jnp.zeros((), jnp.int32)}


def inference_config(cfg: ModelConfig) -> ModelConfig:
  """Same params, no dropout or remat."""
  return dataclasses.replace(cfg, dropout_rate=0.0, remat_policy="none")


def _model(cfg: ModelConfig):
  from lm.models import make_model
  return make_model(cfg)


def _step_fn(model, cfg: ModelConfig):
  """(params, tokens_BL, positions_BL, segment_ids_BL, cache, ctx) -> (logits, cache)."""
  if cfg.family == "encoder_decoder":
    def step(params, tokens, positions, segs, cache, ctx):
      encoded, enc_segs = ctx
      return model.apply({"params": params}, encoded, enc_segs, tokens, positions, segs,
                         cache=cache, method="decode")
  else:
    def step(params, tokens, positions, segs, cache, ctx):
      del ctx
      return model.apply({"params": params}, tokens, positions, segs, cache=cache)
  return step


def _prefill(model, cfg, params, tokens_BP, segs_BP, pos_BP, cache_len: int, bos_id: int):
  """Runs the prompt: (last logits [B, V], cache, ctx, next positions [B])."""
  step = _step_fn(model, cfg)
  b = tokens_BP.shape[0]
  if cfg.family == "encoder_decoder":
    encoded = model.apply({"params": params}, tokens_BP, None, segs_BP, method="encode")
    ctx = (encoded, segs_BP)
    start = jnp.full((b, 1), bos_id, jnp.int32)
    zeros, ones = jnp.zeros((b, 1), jnp.int32), jnp.ones((b, 1), jnp.int32)
    logits, cache = step(params, start, zeros, ones, init_cache(cfg, b, cache_len), ctx)
    return logits[:, -1], cache, ctx, jnp.ones((b,), jnp.int32)
  logits, cache = step(params, tokens_BP, pos_BP, segs_BP, init_cache(cfg, b, cache_len), None)
  return logits[:, -1], cache, None, pos_BP[:, -1] + 1


# ---------------------------------------------------------------- sampling loop

@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "return_logits"))
def _sample_loop(params, tokens_BP, segs_BP, pos_BP, keys_B, stop_S, temperature, top_k, top_p,
                 *, cfg, max_new_tokens: int, return_logits: bool = False):
  model = _model(cfg)
  step = _step_fn(model, cfg)
  b = tokens_BP.shape[0]
  cache_len = max_new_tokens + (1 if cfg.family == "encoder_decoder" else tokens_BP.shape[1])
  logits_BV, cache, ctx, pos_B = _prefill(model, cfg, params, tokens_BP, segs_BP, pos_BP,
                                          cache_len, cfg.decoder_start_id)
  out_BN = jnp.zeros((b, max_new_tokens), jnp.int32)
  all_logits = jnp.zeros((b, max_new_tokens, logits_BV.shape[-1]) if return_logits else (0,),
                         jnp.float32)
  done_B = jnp.zeros((b,), bool)

  def cond(state):
    t, _, _, _, _, done_B, _ = state
    return (t < max_new_tokens) & ~jnp.all(done_B)

  def body(state):
    t, logits_BV, cache, pos_B, out_BN, done_B, all_logits = state
    keys_t = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_B)
    tok_B = sample(logits_BV, keys_t, temperature, top_k, top_p)
    tok_B = jnp.where(done_B, 0, tok_B)
    out_BN = out_BN.at[:, t].set(tok_B)
    if return_logits:
      all_logits = all_logits.at[:, t].set(logits_BV)
    done_B = done_B | jnp.isin(tok_B, stop_S)
    logits, cache = step(params, tok_B[:, None], pos_B[:, None], jnp.ones((b, 1), jnp.int32),
                         cache, ctx)
    return t + 1, logits[:, -1], cache, pos_B + 1, out_BN, done_B, all_logits

  state = (jnp.zeros((), jnp.int32), logits_BV, cache, pos_B, out_BN, done_B, all_logits)
  t, _, _, _, out_BN, _, all_logits = jax.lax.while_loop(cond, body, state)
  return out_BN, t, all_logits


BOS_ID = 2  # lm/data/tokenizer.py BOS (the default model.decoder_start_id)
PAD_ID = 0


def _stop_array(stop_ids: Sequence[int]) -> jax.Array:
  # never empty: -1 matches no token
  return jnp.asarray(list(stop_ids) or [-1], jnp.int32)


def _trim(row: np.ndarray, stop_ids: Sequence[int]) -> list[int]:
  out = []
  for tok in row.tolist():
    if tok in stop_ids:
      break
    out.append(tok)
  return out


def _prepare(cfg: ModelConfig, prompts: Sequence[Sequence[int]], pad_to: int = 0):
  n = max(len(p) for p in prompts)
  length = max(bucket(n), pad_to)
  if cfg.family == "encoder_decoder":
    tokens, segs = right_pad(prompts, length)
    pos = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy()
    return tokens, segs, pos
  return left_pad(prompts, length)


def _batch_pad(arrays: Sequence[np.ndarray], keys: jax.Array, multiple: int):
  """Pads the batch to a multiple of the mesh's data-parallel size (extra rows dropped later)."""
  b = arrays[0].shape[0]
  extra = (-b) % multiple
  if not extra:
    return arrays, keys
  arrays = [np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) for a in arrays]
  keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], extra, axis=0)])
  return arrays, keys


class _MeshContext:
  """`with jax.set_mesh(mesh), nn.logical_axis_rules(rules)` or nothing without a mesh."""

  def __init__(self, mesh, cfg: ModelConfig):
    self.mesh, self.cfg = mesh, cfg
    self._stack = []

  def __enter__(self):
    if self.mesh is not None:
      from lm.sharding import logical_rules
      for ctx in (jax.set_mesh(self.mesh), nn.logical_axis_rules(logical_rules(self.cfg, self.mesh))):
        ctx.__enter__()
        self._stack.append(ctx)
    return self

  def __exit__(self, *exc):
    while self._stack:
      self._stack.pop().__exit__(*exc)


def _dp_size(mesh) -> int:
  if mesh is None:
    return 1
  from lm.sharding import data_parallel_size
  return data_parallel_size(mesh)


def generate(model, params, prompts_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
             stop_ids: Sequence[int] = (), temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, keys: Optional[jax.Array] = None,
             beam_size: int = 1, length_penalty: float = 0.0, mesh=None,
             token_mask_fn: Optional[Callable] = None, return_logits: bool = False):
  """Completions (token ids, without the stop token) for a batch of prompts.

  `model` is the Flax module (DecoderLM or EncoderDecoderLM; its cfg is used).
  `keys` ([B] typed keys) overrides the per-request keys from `seed`.
  beam_size > 1: beam search (`length_penalty` alpha: score = logp / len^alpha).
  token_mask_fn(generated: list[list[int]]) -> bool [B, V] numpy (True = allowed):
  constrained decoding through a host loop over a jitted step.
  return_logits: also return the logits each generated token was sampled from.
  """
  cfg = inference_config(model.cfg)
  prompts_ids = [list(map(int, p)) for p in prompts_ids]
  b = len(prompts_ids)
  arrays = _prepare(cfg, prompts_ids)
  if keys is None:
    keys = request_keys(seed, b)
  arrays, keys = _batch_pad(arrays, keys, _dp_size(mesh))
  stop_S = _stop_array(stop_ids)
  with _MeshContext(mesh, cfg):
    if beam_size > 1:
      from lm.decode_beam import beam_search
      seqs = beam_search(params, *map(jnp.asarray, arrays), stop_S, jnp.float32(length_penalty),
                         cfg=cfg, max_new_tokens=max_new_tokens, beam_size=beam_size)
      return [_trim(r, stop_ids) for r in np.asarray(seqs)[:b]]
    if token_mask_fn is not None:
      out = _host_loop(cfg, params, arrays, keys, stop_ids, temperature, top_k, top_p,
                       max_new_tokens, token_mask_fn, b)
      return out
    out_BN, _, logits = _sample_loop(
        params, *map(jnp.asarray, arrays), keys, stop_S, jnp.float32(temperature),
        jnp.int32(top_k), jnp.float32(top_p), cfg=cfg,
        max_new_tokens=max_new_tokens, return_logits=return_logits)
  rows = [_trim(r, stop_ids) for r in np.asarray(out_BN)[:b]]
  if return_logits:
    return rows, np.asarray(logits)[:b]
  return rows


# ---------------------------------------------------------------- host loop (constraints)

@functools.partial(jax.jit, static_argnames=("cfg", "cache_len"))
def _jit_prefill(params, tokens_BP, segs_BP, pos_BP, *, cfg, cache_len: int):
  return _prefill(_model(cfg), cfg, params, tokens_BP, segs_BP, pos_BP, cache_len,
                  cfg.decoder_start_id)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _jit_step(params, logits_BV, cache, ctx, pos_B, keys_B, t, allowed_BV, temperature, top_k,
              top_p, *, cfg):
  model = _model(cfg)
  keys_t = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_B)
  tok_B = sample(logits_BV, keys_t, temperature, top_k, top_p, allowed_BV)
  ones = jnp.ones((tok_B.shape[0], 1), jnp.int32)
  logits, cache = _step_fn(model, cfg)(params, tok_B[:, None], pos_B[:, None], ones, cache, ctx)
  return tok_B, logits[:, -1], cache, pos_B + 1


def _host_loop(cfg, params, arrays, keys, stop_ids, temperature, top_k, top_p,
               max_new_tokens, token_mask_fn, b):
  tokens, segs, pos = map(jnp.asarray, arrays)
  cache_len = max_new_tokens + (1 if cfg.family == "encoder_decoder" else tokens.shape[1])
  logits, cache, ctx, pos_B = _jit_prefill(params, tokens, segs, pos, cfg=cfg,
                                           cache_len=cache_len)
  generated = [[] for _ in range(tokens.shape[0])]
  done = [False] * tokens.shape[0]
  for t in range(max_new_tokens):
    allowed = np.asarray(token_mask_fn(generated[:b]), bool)
    if allowed.shape[0] < tokens.shape[0]:  # padded rows: anything
      allowed = np.concatenate([allowed, np.ones((tokens.shape[0] - allowed.shape[0],
                                                  allowed.shape[1]), bool)])
    tok, logits, cache, pos_B = _jit_step(
        params, logits, cache, ctx, pos_B, keys, jnp.int32(t), jnp.asarray(allowed),
        jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), cfg=cfg)
    for i, tk in enumerate(np.asarray(tok).tolist()):
      if not done[i]:
        generated[i].append(tk)
        done[i] = tk in stop_ids
    if all(done[:b]):
      break
  return [_trim(np.asarray(g, np.int64), stop_ids) for g in generated[:b]]


# ---------------------------------------------------------------- reference without a cache

@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def _recompute_loop(params, tokens_BP, segs_BP, pos_BP, *, cfg, max_new_tokens: int):
  """Greedy decoding that reruns the whole sequence every step (the no-cache baseline).

  Returns tokens [B, N] and the logits each was chosen from [B, N, V].
  """
  model = _model(cfg)
  b, p = tokens_BP.shape
  enc_dec = cfg.family == "encoder_decoder"
  if enc_dec:
    encoded = model.apply({"params": params}, tokens_BP, None, segs_BP, method="encode")
    seq = jnp.zeros((b, max_new_tokens + 1), jnp.int32).at[:, 0].set(cfg.decoder_start_id)
    segs = jnp.ones_like(seq)
    pos = jnp.broadcast_to(jnp.arange(max_new_tokens + 1, dtype=jnp.int32), seq.shape)
    first = 0
  else:
    seq = jnp.concatenate([tokens_BP, jnp.zeros((b, max_new_tokens), jnp.int32)], 1)
    segs = jnp.concatenate([segs_BP, jnp.ones((b, max_new_tokens), jnp.int32)], 1)
    pos = jnp.concatenate([pos_BP, pos_BP[:, -1:] + 1 + jnp.arange(max_new_tokens)], 1)
    first = p - 1

  def body(t, state):
    seq, all_logits = state
    if enc_dec:
      logits = model.apply({"params": params}, encoded, segs_BP, seq, pos, segs, method="decode")
    else:
      logits = model.apply({"params": params}, seq, pos, segs)
    logits_BV = jax.lax.dynamic_index_in_dim(logits, first + t, axis=1, keepdims=False)
    tok = jnp.argmax(logits_BV, -1).astype(jnp.int32)
    seq = jax.lax.dynamic_update_index_in_dim(seq, tok, first + t + 1, axis=1)
    return seq, all_logits.at[:, t].set(logits_BV)

  all_logits = jnp.zeros((b, max_new_tokens, cfg.vocab_size), jnp.float32)
  seq, all_logits = jax.lax.fori_loop(0, max_new_tokens, body, (seq, all_logits))
  return seq[:, first + 1:first + 1 + max_new_tokens], all_logits


def generate_recompute(model, params, prompts_ids, *, max_new_tokens: int):
  """Greedy tokens [B, N] and logits [B, N, V] without a KV cache (no stop tokens)."""
  cfg = inference_config(model.cfg)
  arrays = _prepare(cfg, prompts_ids)
  toks, logits = _recompute_loop(params, *map(jnp.asarray, arrays), cfg=cfg,
                                 max_new_tokens=max_new_tokens)
  return np.asarray(toks), np.asarray(logits)


# ---------------------------------------------------------------- loading a run

def load_run_config(workdir: str) -> dict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no config.json: give the WORKDIR of a training run")
  with open(path) as f:
    return json.load(f)


def abstract_params(cfg: ModelConfig, mesh=None):
  """Param shapes (and, with a mesh, their shardings from lm/sharding.py rules)."""
  model = _model(cfg)
  z = jnp.zeros((1, 8), jnp.int32)
  args = (z, z) if cfg.family == "encoder_decoder" else (z,)
  boxed = jax.eval_shape(lambda r: model.init({"params": r}, *args)["params"], jax.random.key(0))
  unboxed = nn.meta.unbox(boxed)
  if mesh is None:
    return unboxed
  from lm.sharding import logical_rules
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh,
                                          logical_rules(cfg, mesh))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      unboxed, shardings)


def restore_params(workdir: str, cfg: ModelConfig, step: Optional[int] = None, mesh=None):
  """(params, step) of a run's checkpoint, placed with the mesh's shardings."""
  from lm import layout
  from lm.checkpoint import Checkpointer
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt = Checkpointer(ckpt_dir)
  steps = ckpt.all_steps()
  if not steps:
    raise FileNotFoundError(f"{ckpt_dir} holds no checkpoint")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"step {step} is not in {ckpt_dir}; saved steps: {steps}")
  target = abstract_params(cfg, mesh)
  if mesh is None:  # restore onto the default device
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), target)
  stored = ckpt.restore_params(step, layout.storage_abstract(target, cfg.scan_layers, cfg.num_layers))
  params = layout.from_storage(stored, cfg.scan_layers, cfg.num_layers)
  return layout.place_like(params, target), step


class Decoder:
  """A run's model, params and tokenizer, loaded once; decodes many times.

  Compiled programs are cached per (batch size, prompt-length bucket,
  max_new_tokens), so repeated calls with similar shapes do not recompile.
  """

  def __init__(self, cfg: ModelConfig, params, tokenizer=None, mesh=None, step: int = 0):
    self.cfg = inference_config(cfg)
    self.model = _model(self.cfg)
    self.params, self.tokenizer, self.mesh, self.step = params, tokenizer, mesh, step

  @classmethod
  def from_workdir(cls, workdir: str, step: Optional[int] = None, mesh=None) -> "Decoder":
    from lm.data.hf_tokenizer import load_tokenizer
    run = load_run_config(workdir)
    cfg = ModelConfig(**run["model"])
    params, step = restore_params(workdir, cfg, step, mesh)
    tokenizer = load_tokenizer(workdir)
    return cls(cfg, params, tokenizer, mesh, step)

  def stop_ids(self) -> tuple[int, ...]:
    from lm import chat
    return chat.stop_ids(self.tokenizer) if self.tokenizer is not None else ()

  def generate(self, prompts_ids: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
               stop_ids: Optional[Sequence[int]] = None, **kw) -> list[list[int]]:
    """lm.decode.generate with this run's model and params (stop_ids default: the chat's)."""
    stop = self.stop_ids() if stop_ids is None else stop_ids
    return generate(self.model, self.params, prompts_ids, max_new_tokens=max_new_tokens,
                    stop_ids=stop, mesh=self.mesh, **kw)

  def chat_prompt(self, prompt) -> list[int]:
    """Token ids of a chat prompt: a string (one user turn) or a list of messages."""
    from lm import chat
    messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                else chat.validate_messages(prompt))
    return chat.render_prompt(messages, self.tokenizer).tolist()

  def raw_prompt(self, text: str) -> list[int]:
    return [self.tokenizer.bos_id] + self.tokenizer.encode(text)

  def generate_text(self, prompts: Sequence[Any], *, chat_format: bool = True,
                    stop_strings: Sequence[str] = (), **kw) -> list[str]:
    """Completions as text; each is cut before the first of `stop_strings`."""
    ids = [self.chat_prompt(p) if chat_format else self.raw_prompt(p) for p in prompts]
    texts = [self.tokenizer.decode(r) for r in self.generate(ids, **kw)]
    return [cut_at_stop_strings(t, stop_strings) for t in texts]

  def logits(self, tokens_ids: Sequence[Sequence[int]], decoder_ids=None) -> np.ndarray:
    """Full-sequence logits [B, L, V] (decoder-only: of each token's next; rows right-padded,
    padded positions are garbage). Encoder-decoder: `decoder_ids` are the decoder inputs."""
    n = bucket(max(len(t) for t in tokens_ids))
    tokens, segs = right_pad(tokens_ids, n)
    if self.cfg.family == "encoder_decoder":
      m = bucket(max(len(t) for t in decoder_ids))
      dec, dsegs = right_pad(decoder_ids, m)
      out = _jit_logits(self.params, jnp.asarray(tokens), jnp.asarray(segs), jnp.asarray(dec),
                        jnp.asarray(dsegs), cfg=self.cfg)
    else:
      out = _jit_logits(self.params, jnp.asarray(tokens), jnp.asarray(segs), None, None,
                        cfg=self.cfg)
    return np.asarray(out)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _jit_logits(params, tokens, segs, dec, dsegs, *, cfg):
  model = _model(cfg)
  if cfg.family == "encoder_decoder":
    return model.apply({"params": params}, tokens, dec, None, segs, None, dsegs)
  return model.apply({"params": params}, tokens, None, segs)


def cut_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
  cuts = [text.find(s) for s in stop_strings if s and s in text]
  return text[:min(cuts)] if cuts else text


# ---------------------------------------------------------------- throughput

def measure_prefill(dec: Decoder, prompts_ids: Sequence[Sequence[int]], repeats: int = 3) -> float:
  """Prompt tokens/s of the prefill alone (compiled once, then timed)."""
  arrays = [jnp.asarray(a) for a in _prepare(dec.cfg, prompts_ids)]
  n = arrays[0].shape[1] + 1
  run = lambda: jax.block_until_ready(_jit_prefill(dec.params, *arrays, cfg=dec.cfg, cache_len=n))
  run()
  t0 = time.perf_counter()
  for _ in range(repeats):
    run()
  return sum(map(len, prompts_ids)) * repeats / (time.perf_counter() - t0)


def benchmark_decode(run_cfg, batch_size: int = 8, prompt_len: int = 16,
                     new_tokens: int = 256) -> dict:
  """Decode tokens/s with and without the KV cache (no cache: rerun the whole sequence).

  Random params of the run config's model; greedy, no stop tokens, so every row
  generates `new_tokens`.
  """
  cfg = inference_config(ModelConfig.from_config(run_cfg.model))
  if cfg.position == "learned" and prompt_len + new_tokens > cfg.max_len:
    cfg = dataclasses.replace(cfg, max_len=prompt_len + new_tokens + 1)
  model = _model(cfg)
  z = jnp.zeros((1, 8), jnp.int32)
  args = (z, z) if cfg.family == "encoder_decoder" else (z,)
  params = jax.jit(lambda r: nn.meta.unbox(model.init({"params": r}, *args)["params"]))(
      jax.random.key(0))
  rng = np.random.default_rng(0)
  prompts = rng.integers(16, cfg.vocab_size, (batch_size, prompt_len)).tolist()
  arrays = [jnp.asarray(a) for a in _prepare(cfg, prompts, pad_to=prompt_len)]
  keys = request_keys(0, batch_size)
  stop = _stop_array(())
  scalars = (jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))

  def timed(fn):
    jax.block_until_ready(fn())  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0

  cached = timed(lambda: _sample_loop(params, *arrays, keys, stop, *scalars, cfg=cfg,
                                      max_new_tokens=new_tokens)[0])
  recompute = timed(lambda: _recompute_loop(params, *arrays, cfg=cfg,
                                            max_new_tokens=new_tokens)[0])
  n = batch_size * new_tokens
  return {"decode_batch": batch_size, "decode_new_tokens": new_tokens,
          "decode_tokens_per_s_kv_cache": round(n / cached, 1),
          "decode_tokens_per_s_no_cache": round(n / recompute, 1),
          "decode_kv_cache_speedup": round(recompute / cached, 2)}
