"""Packing causal-LM examples into fixed [batch, length] rows without padding.

A document becomes ids = [bos] + encode(text) + [eos] and the pair
(inputs, targets) = (ids[:-1], ids[1:]). Rows of length L are filled in
order; a pair that does not fit in what is left of a row fills the row and
continues in the next row as a new segment (positions restart at 0), so rows
have padding only where the data ends. Per row, segment ids count 1, 2, ...
(0 = padding); positions count from 0 per segment; weights are 1 on real
targets, 0 on padding.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

FIELDS = ("inputs", "targets", "segment_ids", "positions", "weights")


def clm_ids(tokenizer, text: str) -> np.ndarray:
  """int32 [n + 2]: bos, the text's ids, eos."""
  return np.array([tokenizer.bos_id] + tokenizer.encode(text) + [tokenizer.eos_id],
                  np.int32)


def empty_batch(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
  """An all-padding batch."""
  batch = {k: np.zeros((batch_size, seq_len), np.int32) for k in FIELDS}
  batch["weights"] = np.zeros((batch_size, seq_len), np.float32)
  return batch


class BatchWriter:
  """Fills one batch row by row; each `write` call adds one segment."""

  def __init__(self, batch_size: int, seq_len: int):
    self.batch = empty_batch(batch_size, seq_len)
    self._shape = (batch_size, seq_len)
    self._row = self._col = self._seg = 0
    self._arange = np.arange(seq_len, dtype=np.int32)

  @property
  def full(self) -> bool:
    return self._row == self._shape[0]

  def write(self, ids: np.ndarray, start: int) -> int:
    """Writes the pair of `ids` from input position `start` into the current row.

    Writes as much as fits, opening a new segment, and returns how many input
    positions it wrote (the caller continues from start + that).
    """
    seq_len = self._shape[1]
    n = min(seq_len - self._col, len(ids) - 1 - start)
    r, c = self._row, self._col
    self._seg += 1
    b = self.batch
    b["inputs"][r, c:c + n] = ids[start:start + n]
    b["targets"][r, c:c + n] = ids[start + 1:start + n + 1]
    b["segment_ids"][r, c:c + n] = self._seg
    b["positions"][r, c:c + n] = self._arange[:n]
    b["weights"][r, c:c + n] = 1.0
    self._col += n
    if self._col == seq_len:
      self._row, self._col, self._seg = self._row + 1, 0, 0
    return n


def pack(sequences: Iterable[np.ndarray], batch_size: int,
         seq_len: int) -> Iterator[dict[str, np.ndarray]]:
  """Packed batches of the id sequences (each >= 2 long), the last one padded."""
  writer = BatchWriter(batch_size, seq_len)
  wrote_any = False
  for ids in sequences:
    start = 0
    while start < len(ids) - 1:
      start += writer.write(ids, start)
      wrote_any = True
      if writer.full:
        yield writer.batch
        writer, wrote_any = BatchWriter(batch_size, seq_len), False
  if wrote_any:
    yield writer.batch
