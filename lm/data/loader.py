"""Resumable per-process loader of packed CLM batches, and the fixed eval batches.

Epoch e reads the documents in a grain shuffle seeded by (shuffle_seed, e); this
process takes every process_count-th document of that order, from
process_index. The shard is one endless token stream (epochs follow each other
without padding) cut into rows by `packing.BatchWriter`. The stream position
(epoch, doc, offset) is the whole state: batches are built on demand, never
ahead, so the state always describes the batches already yielded, and it does
not depend on the batch shape.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from lm.data import packing, sources

_STATE_VERSION = 1


def epoch_seed(shuffle_seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([shuffle_seed, epoch]).generate_state(1)[0])


def _check_shard(num_docs: int, process_index: int, process_count: int,
                 allow_empty: bool = False) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  if num_docs <= process_index and not allow_empty:
    raise ValueError(f"{num_docs} documents cannot feed {process_count} processes: "
                     f"process {process_index} would get none. Use more data.")


class Shard:
  """This process's documents in one epoch's order, as token ids (random access).

  Documents are read and tokenized `chunk` at a time: each array_record batched
  read starts a thread pool (~1 ms), so large chunks cost a third of single
  reads per document. Only the latest chunk is kept. `tokenize(tokenizer, text)`
  makes a document's entry (default: `packing.clm_ids`).
  """

  def __init__(self, docs: Sequence[str], tokenizer, seed: int | None,
               process_index: int, process_count: int, chunk: int = 256,
               tokenize: Callable[[Any, str], Any] = packing.clm_ids):
    order = grain.MapDataset.range(len(docs))
    if seed is not None:
      order = order.shuffle(seed=seed)
    self._order = order[process_index::process_count]
    self._len, self._chunk = len(self._order), chunk
    self._docs, self._tokenizer, self._tokenize = docs, tokenizer, tokenize
    self._chunks = self._order.batch(chunk).map(self._tokenize_chunk)
    self._cached_index, self._cached = -1, []

  def _tokenize_chunk(self, doc_indices: np.ndarray) -> list[Any]:
    texts = sources.read_many(self._docs, doc_indices.tolist())
    return [self._tokenize(self._tokenizer, t) for t in texts]

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> Any:
    k = i // self._chunk
    if k != self._cached_index:
      self._cached_index, self._cached = k, self._chunks[k]
    return self._cached[i % self._chunk]

  def doc_index(self, i: int) -> int:
    """Index in `docs` (the whole split) of this shard's i-th document."""
    return int(self._order[i])

  def random_other(self, i: int, rng: np.random.Generator) -> Any:
    """A uniformly random document other than the i-th, cheaply: from i's cached chunk.

    Chunks hold consecutive documents of a shuffled order, so this is a random
    document of the split. A chunk of one (a tiny last chunk) reads one from `docs`.
    """
    self[i]  # makes i's chunk the cached one
    n, j = len(self._cached), i % self._chunk
    if n > 1:
      other = int(rng.integers(n - 1))
      return self._cached[other + (other >= j)]
    if len(self._docs) < 2:
      raise ValueError("a random other document needs at least 2 documents")
    other = int(rng.integers(len(self._docs) - 1))
    mine = self.doc_index(i)
    text = sources.read_many(self._docs, [other + (other >= mine)])[0]
    return self._tokenize(self._tokenizer, text)


class PackedLoader:
  """Endless iterator of packed batches (dict of numpy [B, L]) with exact resume."""

  def __init__(self, docs: Sequence[str], tokenizer, seq_len: int, batch_size: int,
               shuffle_seed: int = 0, process_index: int = 0, process_count: int = 1):
    _check_shard(len(docs), process_index, process_count)
    self._docs, self._tokenizer = docs, tokenizer
    self.seq_len, self.batch_size = seq_len, batch_size
    self._seed = shuffle_seed
    self._index, self._count = process_index, process_count
    self._epoch, self._doc, self._offset = 0, 0, 0
    self._shard = self._epoch_shard(0)
    self._ids = None  # tokens of the document at self._doc, once read

  def _epoch_shard(self, epoch: int) -> Shard:
    return Shard(self._docs, self._tokenizer, epoch_seed(self._seed, epoch),
                 self._index, self._count)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    writer = packing.BatchWriter(self.batch_size, self.seq_len)
    while not writer.full:
      if self._ids is None:
        self._ids = self._shard[self._doc]
      self._offset += writer.write(self._ids, self._offset)
      if self._offset == len(self._ids) - 1:  # document done
        self._ids, self._offset, self._doc = None, 0, self._doc + 1
        if self._doc == len(self._shard):
          self._epoch, self._doc = self._epoch + 1, 0
          self._shard = self._epoch_shard(self._epoch)
    return writer.batch

  @property
  def epoch(self) -> int:
    return self._epoch

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position after the last batch yielded."""
    return {"version": _STATE_VERSION, "epoch": self._epoch, "doc": self._doc,
            "offset": self._offset, "num_docs": len(self._docs),
            "shuffle_seed": self._seed, "process_index": self._index,
            "process_count": self._count}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues exactly where the loader that produced `state` stopped."""
    mine = self.get_state()
    for key in ("version", "num_docs", "shuffle_seed", "process_index", "process_count"):
      if state.get(key) != mine[key]:
        raise ValueError(
            f"data iterator state has {key}={state.get(key)!r} but this loader has "
            f"{mine[key]!r}: resume with the same data, data.shuffle_seed and process "
            "count, or start a new run.")
    epoch, doc, offset = int(state["epoch"]), int(state["doc"]), int(state["offset"])
    shard = self._shard if epoch == self._epoch else self._epoch_shard(epoch)
    if not 0 <= doc < len(shard) or offset < 0:
      raise ValueError(f"data iterator state is out of range: {state}")
    self._shard, self._epoch, self._doc, self._offset, self._ids = (
        shard, epoch, doc, offset, None)


def eval_batches(docs: Sequence[str], tokenizer, seq_len: int, batch_size: int,
                 num_batches: int, process_index: int = 0,
                 process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` packed batches of this process's shard, in order.

  No shuffle; every process gets the same number of batches, all-padding
  (weight 0) ones when its documents run out (or it has none).
  """
  _check_shard(len(docs), process_index, process_count, allow_empty=True)
  shard = Shard(docs, tokenizer, None, process_index, process_count)
  stream = (shard[i] for i in range(len(shard)))
  out = list(itertools.islice(packing.pack(stream, batch_size, seq_len), num_batches))
  while len(out) < num_batches:
    out.append(packing.empty_batch(batch_size, seq_len))
  return out
