"""Per-document examples packed whole into rows: the loader of every non-CLM objective.

An objective's preprocessing is a function `make(entry, rng, other) -> [example]`
from one tokenized document (see `Shard`) to its examples: dicts of 1-D numpy
fields (MLM: a masked [CLS] A [SEP] B [SEP]; span corruption: encoder inputs and
decoder targets; ...). `rng` is seeded by (seed, stream, epoch, document index), so
an example depends only on those, not on batch shapes or process count, and a
resumed run rebuilds it bitwise. `other(rng)` gives a random other document (NSP).

`RowPacker` places whole examples into [batch, length] rows, each a new segment
(ids 1, 2, ... per row; 0 = padding) with positions restarting at 0; an example
that does not fit in what is left of a row starts the next row. Examples with
several sides (encoder and decoder) are packed on all sides at once, so encoder
segment s and decoder segment s of a row are the same example.

`ExampleLoader` walks this process's shard like `PackedLoader` (epoch e in a grain
shuffle seeded by (shuffle_seed, e), every process_count-th document). Its state
is (epoch, document, example within it) of the first example not yet in a batch.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from lm.data.loader import Shard, _check_shard, epoch_seed

_STATE_VERSION = 1
# A sentence ends after . ! or ? (and closing quotes/brackets) followed by
# whitespace, or at a line break; the whitespace stays with the sentence before it.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+|\n\s*")


def split_sentences(text: str) -> list[str]:
  """Sentences of a document; "".join(split_sentences(t)) == t."""
  out, start = [], 0
  for m in _SENTENCE_END.finditer(text):
    if m.end() < len(text):
      out.append(text[start:m.end()])
      start = m.end()
  if start < len(text):
    out.append(text[start:])
  return out


def sentence_ids(tokenizer, text: str) -> list[np.ndarray]:
  """A document as a list of sentences, each int32 token ids (no specials), none empty."""
  out = [np.asarray(tokenizer.encode(s), np.int32) for s in split_sentences(text)]
  return [s for s in out if len(s)]


def text_ids(tokenizer, text: str) -> np.ndarray:
  """A document's int32 token ids, no specials."""
  return np.asarray(tokenizer.encode(text), np.int32)


class RowPacker:
  """Fills one batch with whole examples (see the module docstring).

  `sides` maps a field-name prefix to its row length, e.g. {"": 128} or
  {"encoder_": 128, "decoder_": 32}; `fields` maps each example field to its
  side prefix and dtype. Every side gets `<prefix>segment_ids` and
  `<prefix>positions` (int32) as well.
  """

  def __init__(self, batch_size: int, sides: dict[str, int],
               fields: dict[str, tuple[str, Any]]):
    self.batch_size, self.sides, self.fields = batch_size, dict(sides), dict(fields)
    self.batch = {name: np.zeros((batch_size, sides[side]), dtype)
                  for name, (side, dtype) in fields.items()}
    for side, length in sides.items():
      self.batch[f"{side}segment_ids"] = np.zeros((batch_size, length), np.int32)
      self.batch[f"{side}positions"] = np.zeros((batch_size, length), np.int32)
    self._first_field = {side: next(n for n, (s, _) in fields.items() if s == side) for side in sides}
    self._row, self._seg = 0, 0
    self._col = dict.fromkeys(sides, 0)
    self.num_examples = 0

  @property
  def full(self) -> bool:
    return self._row == self.batch_size

  def lengths(self, example: dict[str, np.ndarray]) -> dict[str, int]:
    return {side: len(example[f]) for side, f in self._first_field.items()}

  def add(self, example: dict[str, np.ndarray]) -> bool:
    """Places the example; False (nothing written) when the batch has no room left."""
    lengths = self.lengths(example)
    for side, n in lengths.items():
      if not 0 < n <= self.sides[side]:
        raise ValueError(f"example side {side or 'tokens'!r} has length {n}, row length is "
                         f"{self.sides[side]}")
    if any(self._col[s] + n > self.sides[s] for s, n in lengths.items()):
      self._row, self._seg, self._col = self._row + 1, 0, dict.fromkeys(self.sides, 0)
    if self.full:
      return False
    r, b = self._row, self.batch
    self._seg += 1
    for side, n in lengths.items():
      c = self._col[side]
      b[f"{side}segment_ids"][r, c:c + n] = self._seg
      b[f"{side}positions"][r, c:c + n] = np.arange(n, dtype=np.int32)
      for name, (s, _) in self.fields.items():
        if s == side:
          b[name][r, c:c + n] = example[name]
      self._col[side] = c + n
    self.num_examples += 1
    return True


MakeExamples = Callable[[Any, np.random.Generator, Callable[[np.random.Generator], Any]],
                        list[dict[str, np.ndarray]]]


class ExampleLoader:
  """Endless (or, with repeat=False, one pass of) packed batches with exact resume.

  `kind` names the preprocessing (e.g. "mlm_nsp"); a state of another kind is refused.
  """

  def __init__(self, docs: Sequence[str], tokenizer, tokenize: Callable[[Any, str], Any],
               make_examples: MakeExamples, new_packer: Callable[[], RowPacker], kind: str,
               shuffle_seed: int | None = 0, process_index: int = 0, process_count: int = 1,
               repeat: bool = True, example_seed: int = 0):
    _check_shard(len(docs), process_index, process_count, allow_empty=not repeat)
    self._docs, self._tokenizer, self._tokenize = docs, tokenizer, tokenize
    self._make, self._new_packer, self.kind = make_examples, new_packer, kind
    self._seed, self._example_seed = shuffle_seed, example_seed
    self._index, self._count, self._repeat = process_index, process_count, repeat
    self._epoch, self._doc, self._k = 0, 0, 0
    self._shard = self._epoch_shard(0)
    self._examples = None  # examples of the document at self._doc, once made
    self._done = False

  def _epoch_shard(self, epoch: int) -> Shard:
    seed = None if self._seed is None else epoch_seed(self._seed, epoch)
    return Shard(self._docs, self._tokenizer, seed, self._index, self._count,
                 tokenize=self._tokenize)

  def _examples_of(self, i: int) -> list[dict[str, np.ndarray]]:
    doc = self._shard.doc_index(i)
    rng = np.random.default_rng([self._example_seed, self._epoch, doc])
    return self._make(self._shard[i], rng, lambda r: self._shard.random_other(i, r))

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._done:
      raise StopIteration
    packer = self._new_packer()
    empty_docs = 0
    while True:
      if self._doc == len(self._shard):  # epoch done
        if not self._repeat:
          self._done = True
          if packer.num_examples:
            return packer.batch
          raise StopIteration
        self._epoch, self._doc, self._k = self._epoch + 1, 0, 0
        self._shard = self._epoch_shard(self._epoch)
      if self._examples is None:
        self._examples = self._examples_of(self._doc)
      if self._k == len(self._examples):
        if not self._examples:
          empty_docs += 1
          if empty_docs > len(self._shard):
            raise ValueError(f"no document of this shard gives a {self.kind} example "
                             "(documents too short?); use longer documents")
        self._doc, self._k, self._examples = self._doc + 1, 0, None
        continue
      if not packer.add(self._examples[self._k]):
        return packer.batch
      self._k += 1

  @property
  def epoch(self) -> int:
    return self._epoch

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position after the last batch yielded."""
    return {"version": _STATE_VERSION, "kind": self.kind, "epoch": self._epoch,
            "doc": self._doc, "example": self._k, "num_docs": len(self._docs),
            "shuffle_seed": self._seed, "process_index": self._index,
            "process_count": self._count}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues exactly where the loader that produced `state` stopped."""
    mine = self.get_state()
    for key in ("version", "kind", "num_docs", "shuffle_seed", "process_index", "process_count"):
      if state.get(key) != mine[key]:
        raise ValueError(
            f"data iterator state has {key}={state.get(key)!r} but this loader has "
            f"{mine[key]!r}: resume with the same data, objective, data.shuffle_seed and "
            "process count, or start a new run.")
    epoch, doc, k = int(state["epoch"]), int(state["doc"]), int(state["example"])
    shard = self._shard if epoch == self._epoch else self._epoch_shard(epoch)
    if not 0 <= doc <= len(shard) or k < 0:
      raise ValueError(f"data iterator state is out of range: {state}")
    self._shard, self._epoch, self._doc, self._k = shard, epoch, doc, k
    self._examples, self._done = None, False


def fixed_batches(loader: ExampleLoader, num_batches: int) -> list[dict[str, np.ndarray]]:
  """The first `num_batches` batches of a one-pass loader, all-padding ones after it ends."""
  out = []
  for batch in loader:
    out.append(batch)
    if len(out) == num_batches:
      return out
  while len(out) < num_batches:
    out.append(loader._new_packer().batch)  # pylint: disable=protected-access
  return out
