"""What the LM policy needs from a language model, and two implementations.

A backend turns token-id prompts into continuations:

    generate(prompts, *, max_new_tokens, seeds, temperature=0.0, constraints=None)
        -> list[list[int]]     the new ids of each row, the stop token excluded

`constraints[i]` (optional) steers row i one token at a time: before each token
the backend asks `mask(remaining)` (bool [vocab], the allowed next ids, with
`remaining` new tokens still allowed) and then calls `advance(id)`. Sampling is
host-side from the step's logits, keyed per row by `seeds[i]`, so an episode's
samples do not depend on what else is in the batch.

`JaxBackend` loads a decoder-only WORKDIR once (config.json, tokenizer.model,
the newest checkpoint) and decodes with the model's KV cache: one jitted prefill
per prompt-length bucket and one jitted one-token step, whatever the batch.
`FakeBackend` replays scripted texts, for tests of everything above it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np


class Constraint(Protocol):

  def mask(self, remaining: int) -> np.ndarray: ...

  def advance(self, token: int) -> None: ...


class Backend(Protocol):
  tokenizer: Any
  max_len: int
  stop_ids: tuple[int, ...]

  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               seeds: Sequence[int], temperature: float = 0.0,
               constraints: Sequence[Constraint | None] | None = None) -> list[list[int]]: ...


def sample_row(logits: np.ndarray, allowed: np.ndarray | None, temperature: float,
               rng: np.random.Generator) -> int:
  """Greedy (temperature 0) or softmax sampling over the allowed ids."""
  logits = np.asarray(logits, np.float64)
  if allowed is not None:
    logits = np.where(allowed, logits, -np.inf)
  if temperature <= 0:
    return int(np.argmax(logits))
  z = logits / temperature
  z = z - np.max(z)
  p = np.exp(z)
  p /= p.sum()
  return int(rng.choice(len(p), p=p))


def _bucket(n: int, step: int) -> int:
  return -(-n // step) * step


def _pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


class JaxBackend:
  """Greedy/sampled decoding of a decoder-only run's params with a KV cache."""
  FAMILIES = ("decoder",)

  def __init__(self, model_cfg, params, tokenizer, prompt_bucket: int = 32):
    import jax
    import jax.numpy as jnp
    from lm import chat
    from lm.models import make_model
    if model_cfg.family not in self.FAMILIES:
      raise ValueError(f"{type(self).__name__} decodes model.family in {self.FAMILIES}; this run's "
                       f"model.family={model_cfg.family!r}")
    self.cfg, self.params, self.tokenizer = model_cfg, params, tokenizer
    self.max_len = model_cfg.max_len
    self.stop_ids = tuple(chat.stop_ids(tokenizer))
    self.prompt_bucket = prompt_bucket
    model = make_model(model_cfg)

    def run(params, tokens_BL, positions_BL, segments_BL, cache):
      logits_BLV, cache = model.apply({"params": params}, tokens_BL, positions_BL, segments_BL,
                                      cache=cache)
      return logits_BLV[:, -1], cache

    self._run = jax.jit(run, donate_argnums=(4,))
    self._jnp = jnp
    # Without KV-cache support in the model, each step recomputes the whole window.
    import inspect
    self.cached = "cache" in inspect.signature(type(model).__call__).parameters

    def full(params, tokens_BT, positions_BT, segments_BT, index):
      logits_BTV = model.apply({"params": params}, tokens_BT, positions_BT, segments_BT)
      return jax.lax.dynamic_index_in_dim(logits_BTV, index, axis=1, keepdims=False)

    self._full = jax.jit(full)

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, **kw) -> "JaxBackend":
    """A run's newest (or `step`) params and tokenizer; an encoder-decoder run gets a DecodeBackend."""
    from lm import decode
    from lm.config import ModelConfig
    from lm import chat
    from lm.data.hf_tokenizer import load_tokenizer
    config = decode.load_run_config(workdir)
    model_cfg = ModelConfig(**{**config["model"], "dropout_rate": 0.0, "remat_policy": "none"})
    tokenizer = load_tokenizer(workdir)
    if tokenizer is None:
      raise FileNotFoundError(f"{workdir} has no tokenizer.model (or tokenizer/ of an import): "
                              "is it a finished training run?")
    try:
      chat.stop_ids(tokenizer)
    except KeyError as e:  # e.g. an imported Hugging Face vocabulary (lm/interop)
      raise ValueError(f"{workdir}: the agent prompts in this project's chat format, and its "
                       f"tokenizer lacks the chat tokens ({e}); use a run tuned with "
                       "this project's tokenizer") from e
    if model_cfg.family not in cls.FAMILIES:
      cls = DecodeBackend  # the library decoder also runs encoder-decoder models
    params, step = decode.restore_params(workdir, model_cfg, step)
    out = cls(model_cfg, params, tokenizer, **kw)
    out.step = step
    return out

  def _empty_cache(self, batch: int) -> dict:
    jnp, cfg = self._jnp, self.cfg
    shape = (cfg.num_layers, batch, self.max_len, cfg.kv_heads, cfg.resolved_head_dim)
    dtype = jnp.dtype(cfg.dtype)
    # Distinct buffers: the cache is donated, and one buffer cannot be donated twice.
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "segment_ids": jnp.zeros((batch, self.max_len), jnp.int32),
            "positions": jnp.zeros((batch, self.max_len), jnp.int32), "index": jnp.int32(0)}

  def prompt_room(self, max_new_tokens: int) -> int:
    """The longest prompt that leaves room for `max_new_tokens`."""
    return self.max_len - max_new_tokens

  def generate(self, prompts, *, max_new_tokens, seeds, temperature=0.0, constraints=None):
    jnp = self._jnp
    n = len(prompts)
    if n == 0:
      return []
    longest = max(len(p) for p in prompts)
    if longest >= self.max_len:
      raise ValueError(f"a prompt of {longest} tokens does not fit model.max_len={self.max_len}")
    # Pad to a bucket (few prefill compiles) but never into the room for new tokens.
    width = min(_bucket(longest, self.prompt_bucket),
                max(longest, self.max_len - max_new_tokens), self.max_len - 1)
    batch = _pow2(n)
    tokens = np.zeros((batch, width), np.int32)
    segments = np.zeros((batch, width), np.int32)
    positions = np.zeros((batch, width), np.int32)
    for i in range(batch):  # left-pad, so every row's next token goes in one slot
      p = list(prompts[i]) if i < n else [self.tokenizer.bos_id]
      tokens[i, width - len(p):] = p
      segments[i, width - len(p):] = 1
      positions[i, width - len(p):] = np.arange(len(p))
    lengths = np.asarray([len(p) for p in prompts] + [1] * (batch - n))
    if not self.cached:
      return self._generate_recompute(tokens, positions, segments, lengths, n, max_new_tokens,
                                      seeds, temperature, constraints)
    logits, cache = self._run(self.params, jnp.asarray(tokens), jnp.asarray(positions),
                              jnp.asarray(segments), self._empty_cache(batch))
    budget = min(max_new_tokens, self.max_len - width)
    rngs = [np.random.default_rng(int(s)) for s in seeds]
    outs: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for t in range(budget):
      host = np.asarray(logits)[:, :self.tokenizer.vocab_size]  # model vocab may be padded
      nxt = np.zeros((batch, 1), np.int32)
      for i in range(n):
        if done[i]:
          continue
        c = constraints[i] if constraints else None
        allowed = c.mask(budget - t) if c is not None else None
        tok = sample_row(host[i], allowed, temperature, rngs[i])
        if tok in self.stop_ids:
          done[i] = True
          continue
        if c is not None:
          c.advance(tok)
        outs[i].append(tok)
        nxt[i, 0] = tok
      if all(done) or t == budget - 1:
        break
      pos = (lengths + t)[:, None].astype(np.int32)
      logits, cache = self._run(self.params, jnp.asarray(nxt), jnp.asarray(pos),
                                jnp.ones((batch, 1), jnp.int32), cache)
    return outs

  def _generate_recompute(self, tokens, positions, segments, lengths, n, max_new_tokens, seeds,
                          temperature, constraints):
    jnp = self._jnp
    batch, width = tokens.shape
    pad = lambda a: np.pad(a, ((0, 0), (0, self.max_len - width)))
    tokens, positions, segments = pad(tokens), pad(positions), pad(segments)
    budget = min(max_new_tokens, self.max_len - width)
    rngs = [np.random.default_rng(int(s)) for s in seeds]
    outs: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for t in range(budget):
      logits = self._full(self.params, jnp.asarray(tokens), jnp.asarray(positions),
                          jnp.asarray(segments), jnp.int32(width - 1 + t))
      host = np.asarray(logits)[:, :self.tokenizer.vocab_size]
      for i in range(n):
        if done[i]:
          continue
        c = constraints[i] if constraints else None
        tok = sample_row(host[i], c.mask(budget - t) if c is not None else None, temperature,
                         rngs[i])
        if tok in self.stop_ids:
          done[i] = True
          continue
        if c is not None:
          c.advance(tok)
        outs[i].append(tok)
        tokens[i, width + t], segments[i, width + t] = tok, 1
        positions[i, width + t] = lengths[i] + t
      if all(done):
        break
    return outs


class FakeBackend:
  """Replays texts: `script(prompt_text) -> str` picks each row's continuation.

  Honours constraints (it checks the scripted text token by token and, where a
  token is not allowed, takes the first allowed one), so tests can drive the
  constrained path without a model.
  """

  def __init__(self, tokenizer, script: Callable[[str], str], max_len: int = 512):
    from lm import chat
    self.tokenizer, self.script, self.max_len = tokenizer, script, max_len
    self.stop_ids = tuple(chat.stop_ids(tokenizer))
    self.calls = 0

  def generate(self, prompts, *, max_new_tokens, seeds, temperature=0.0, constraints=None):
    self.calls += 1
    outs = []
    for i, p in enumerate(prompts):
      want = self.tokenizer.encode(self.script(self.tokenizer.decode(p))) + [self.stop_ids[0]]
      c = constraints[i] if constraints else None
      out: list[int] = []
      for t in range(max_new_tokens):
        tok = want[len(out)] if len(out) < len(want) else self.stop_ids[0]
        if c is not None:
          allowed = c.mask(max_new_tokens - t)
          if not allowed[tok]:
            tok = int(np.flatnonzero(allowed)[0])
        if tok in self.stop_ids:
          break
        if c is not None:
          c.advance(tok)
        out.append(tok)
      outs.append(out)
    return outs


class DecodeBackend(JaxBackend):
  """The same model and params, decoded by lm/decode.py's `generate` (the library path).

  Constraints go through its `token_mask_fn` host loop; each row's key is
  `key(seeds[i])`, so samples do not depend on the batch. It also decodes
  encoder-decoder runs (the prompt is the encoder input, as in sft_seq2seq).
  """
  FAMILIES = ("decoder", "encoder_decoder")

  def generate(self, prompts, *, max_new_tokens, seeds, temperature=0.0, constraints=None):
    import jax
    from lm import decode
    if not prompts:
      return []
    keys = jax.numpy.stack([jax.random.key(int(s)) for s in seeds])
    vocab, text_vocab = self.cfg.vocab_size, self.tokenizer.vocab_size
    fed = [0] * len(prompts)

    def mask_fn(generated):
      out = np.zeros((len(generated), vocab), bool)
      for i, row in enumerate(generated):
        c = constraints[i] if constraints else None
        if c is None:
          out[i, :text_vocab] = True
          continue
        for tok in row[fed[i]:]:
          if tok not in self.stop_ids:
            c.advance(int(tok))
        fed[i] = len(row)
        out[i, :text_vocab] = c.mask(max_new_tokens - len(row))
      return out

    model = __import__("lm.models", fromlist=["make_model"]).make_model(self.cfg)
    return decode.generate(model, self.params, [list(p) for p in prompts],
                           max_new_tokens=max_new_tokens, stop_ids=self.stop_ids,
                           temperature=temperature, keys=keys, token_mask_fn=mask_fn)
