"""BERT preprocessing: masked-LM corruption and next-sentence-prediction pairs.

MLM (`mask_tokens`): of the n tokens that are not special (ids below
tokenizer.NUM_RESERVED: pad, bos, eos, unk, <cls>, <sep>, <mask>, ...), rate * n
(rounded down or up at random, so the mean is exactly rate * n; BERT rounds to
nearest, which is biased for short examples) are selected uniformly without
replacement; each
selected token independently becomes <mask> with probability mask_fraction, a
random non-special token with probability random_fraction, else stays. The loss
reads only selected tokens (weights 1 there).

NSP (`nsp_examples`), as in BERT's data generation: a document's sentences are
grouped into chunks of about `max_tokens`; a chunk splits at a random sentence
boundary into A and B. The label is drawn first, 50/50: IsNext (0) keeps B, the
true continuation; NotNext (1) replaces B with sentences from a random other
document starting at a random sentence, and the unused sentences of the chunk go
back into the next chunk. A one-sentence chunk splits at a random token instead.
The pair is trimmed to fit (the longer side loses a token at a random end) and
laid out as [CLS] A [SEP] B [SEP] with token types 0 (CLS, A, first SEP) and 1.

Example fields: inputs, targets (the original tokens), weights (float32, MLM),
token_types, nsp_labels and nsp_weights (float32; both set only at [CLS]).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lm.data.tokenizer import NUM_RESERVED

ISNEXT, NOTNEXT = 0, 1
MLM_FIELDS = {"inputs": ("", np.int32), "targets": ("", np.int32), "weights": ("", np.float32),
              "token_types": ("", np.int32)}
NSP_FIELDS = {**MLM_FIELDS, "nsp_labels": ("", np.int32), "nsp_weights": ("", np.float32)}


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
  rate: float
  mask_fraction: float
  random_fraction: float
  mask_id: int
  cls_id: int
  sep_id: int
  vocab_size: int  # random replacements are drawn from [NUM_RESERVED, vocab_size)

  @classmethod
  def from_config(cls, data_cfg, tokenizer) -> "MaskingSpec":
    return cls(float(data_cfg.mlm_rate), float(data_cfg.mlm_mask_fraction),
               float(data_cfg.mlm_random_fraction), tokenizer.special_id("<mask>"),
               tokenizer.special_id("<cls>"), tokenizer.special_id("<sep>"), tokenizer.vocab_size)


def mask_tokens(ids: np.ndarray, spec: MaskingSpec,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(corrupted inputs, float32 weights: 1 on selected tokens) for int ids [n]."""
  inputs = ids.copy()
  weights = np.zeros(len(ids), np.float32)
  candidates = np.flatnonzero(ids >= NUM_RESERVED)
  if not len(candidates):
    return inputs, weights
  # rate * n rounded up or down at random: exactly `rate` on average, even for short examples
  n = min(len(candidates), int(np.floor(spec.rate * len(candidates) + rng.random())))
  chosen = np.sort(rng.choice(candidates, size=n, replace=False))
  weights[chosen] = 1.0
  u = rng.random(n)
  to_mask = chosen[u < spec.mask_fraction]
  to_random = chosen[(u >= spec.mask_fraction) & (u < spec.mask_fraction + spec.random_fraction)]
  inputs[to_mask] = spec.mask_id
  inputs[to_random] = rng.integers(NUM_RESERVED, spec.vocab_size, size=len(to_random))
  return inputs, weights


def _masked(tokens: np.ndarray, types: np.ndarray, spec: MaskingSpec, rng: np.random.Generator,
            nsp_label: int | None) -> dict[str, np.ndarray]:
  inputs, weights = mask_tokens(tokens, spec, rng)
  ex = {"inputs": inputs, "targets": tokens, "weights": weights, "token_types": types}
  if nsp_label is not None:
    ex["nsp_labels"] = np.zeros(len(tokens), np.int32)
    ex["nsp_labels"][0] = nsp_label
    ex["nsp_weights"] = np.zeros(len(tokens), np.float32)
    ex["nsp_weights"][0] = 1.0
  return ex


def mlm_examples(ids: np.ndarray, spec: MaskingSpec, rng: np.random.Generator,
                 seq_len: int) -> list[dict[str, np.ndarray]]:
  """MLM only: the document cut into [CLS] chunk [SEP] examples of at most seq_len tokens."""
  room = seq_len - 2
  if not len(ids):
    return []
  out = []
  for part in np.array_split(ids, -(-len(ids) // room)):
    tokens = np.concatenate([[spec.cls_id], part, [spec.sep_id]]).astype(np.int32)
    out.append(_masked(tokens, np.zeros(len(tokens), np.int32), spec, rng, None))
  return out


def _trim_pair(a: list, b: list, max_tokens: int, rng: np.random.Generator) -> None:
  while len(a) + len(b) > max_tokens:
    longer = a if len(a) > len(b) else b
    longer.pop(0 if rng.random() < 0.5 else -1)


def nsp_examples(sentences: list[np.ndarray], spec: MaskingSpec, rng: np.random.Generator,
                 other, seq_len: int) -> list[dict[str, np.ndarray]]:
  """MLM+NSP examples of one document (see the module docstring).

  `other(rng)` returns a random other document as a list of sentence id arrays.
  """
  max_tokens = seq_len - 3  # [CLS], [SEP], [SEP]
  out, i = [], 0
  while i < len(sentences):
    chunk, size = [], 0
    while i < len(sentences) and (not chunk or size < max_tokens):
      chunk.append(sentences[i])
      size += len(sentences[i])
      i += 1
    label = ISNEXT if rng.random() < 0.5 else NOTNEXT
    if len(chunk) >= 2:
      a_end = int(rng.integers(1, len(chunk)))
      a = np.concatenate(chunk[:a_end]).tolist()
      b = np.concatenate(chunk[a_end:]).tolist()
      if label == NOTNEXT:
        i -= len(chunk) - a_end  # the true continuation is used by the next chunk
    else:
      words = chunk[0]
      if len(words) < 2:  # cannot make a true pair; skipped whatever the label
        continue
      cut = int(rng.integers(1, len(words)))
      a, b = words[:cut].tolist(), words[cut:].tolist()
    if label == NOTNEXT:
      b = []
      for _ in range(10):  # another document may be empty
        b = _random_span(other(rng), max(1, max_tokens - len(a)), rng)
        if b:
          break
      else:
        continue
    _trim_pair(a, b, max_tokens, rng)
    tokens = np.array([spec.cls_id] + a + [spec.sep_id] + b + [spec.sep_id], np.int32)
    types = np.array([0] * (len(a) + 2) + [1] * (len(b) + 1), np.int32)
    out.append(_masked(tokens, types, spec, rng, label))
  return out


def _random_span(sentences: list[np.ndarray], target: int, rng: np.random.Generator) -> list:
  """Sentences of another document from a random one on, about `target` tokens."""
  if not sentences:
    return []
  start = int(rng.integers(len(sentences)))
  span: list = []
  for s in sentences[start:]:
    span.extend(s.tolist())
    if len(span) >= target:
      break
  return span


def capped_sentences(sentences: list[np.ndarray], max_len: int) -> list[np.ndarray]:
  """Sentences longer than max_len cut into pieces (text without punctuation stays usable)."""
  out = []
  for s in sentences:
    out.extend(s[i:i + max_len] for i in range(0, len(s), max_len))
  return out
