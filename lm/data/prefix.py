"""Prefix-LM examples and (input, target) pairs cut from documents.

Prefix-LM (decoder family): a document's ids <s> ... </s> are cut into pieces of
at most seq_len + 1 tokens that overlap by one (every token is a target once).
A piece gives inputs = piece[:-1] and targets = piece[1:] (m tokens each) and a
split point p: uniform in [1, m], or round(prefix_fraction * m) when that is set.
Inputs [0, p) are the prefix (prefix_mask 1: they attend to each other both
ways); the loss is on the targets from position p - 1 on, i.e. on every token
after the prefix (weights 1 there). Fields: inputs, targets, weights (float32),
prefix_mask.

Seq2seq pairs (encoder-decoder): a document's ids are cut into pieces of at most
min(encoder length, decoder length) - 1 tokens, each split the same way into an
input and a target, each followed by </s> (`spans.seq2seq_example` lays them out).
"""
from __future__ import annotations

import numpy as np

from lm.data.spans import seq2seq_example

PREFIX_FIELDS = {"inputs": ("", np.int32), "targets": ("", np.int32),
                 "weights": ("", np.float32), "prefix_mask": ("", np.int32)}


def split_point(m: int, fraction: float, rng: np.random.Generator, low: int = 1,
                high: int | None = None) -> int:
  """A split in [low, high] (high defaults to m): fixed fraction of m, or uniform."""
  high = m if high is None else high
  if fraction > 0:
    return min(max(int(round(fraction * m)), low), high)
  return int(rng.integers(low, high + 1))


def prefix_lm_examples(ids: np.ndarray, seq_len: int, fraction: float,
                       rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
  """Prefix-LM examples of one document's ids (with <s> and </s>)."""
  out = []
  for start in range(0, max(len(ids) - 1, 0), seq_len):
    piece = ids[start:start + seq_len + 1]
    m = len(piece) - 1
    p = split_point(m, fraction, rng)
    pos = np.arange(m)
    out.append({"inputs": piece[:-1].astype(np.int32), "targets": piece[1:].astype(np.int32),
                "weights": (pos >= p - 1).astype(np.float32),
                "prefix_mask": (pos < p).astype(np.int32)})
  return out


def seq2seq_pair_examples(ids: np.ndarray, max_piece: int, fraction: float, eos_id: int,
                          bos_id: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
  """Encoder-decoder examples from one document's ids (no specials): input -> continuation."""
  if len(ids) < 2:
    return []
  out = []
  for piece in np.array_split(ids, -(-len(ids) // max_piece)):
    if len(piece) < 2:
      continue
    p = split_point(len(piece), fraction, rng, high=len(piece) - 1)
    out.append(seq2seq_example(np.append(piece[:p], eos_id), np.append(piece[p:], eos_id),
                               bos_id))
  return out
