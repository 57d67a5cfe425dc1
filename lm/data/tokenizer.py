"""SentencePiece BPE tokenizer with fixed special ids and exact byte accounting.

Ids never move between runs or vocab sizes: pad=0, eos=1, bos=2, unk=3, then the
CONTROL symbols below at 4.. (encoding raw text never produces them, so user
text cannot inject them), then the 256 byte-fallback pieces, then merges.
Training keeps text exactly (identity normalisation, no dummy prefix, spaces
kept), and byte fallback covers any character, so decode(encode(t)) == t for
all text without U+2581 ("▁", which SentencePiece uses for the space).
"""
from __future__ import annotations

import collections
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

from lm.config import ConfigError
from lm.data import sources

PAD, EOS, BOS, UNK = 0, 1, 2, 3
CONTROL_SYMBOLS = (
    ("<mask>", "<sep>", "<cls>", "<|system|>", "<|user|>", "<|assistant|>",
     "<|tool|>", "<|end|>") + tuple(f"<extra_id_{i}>" for i in range(16)))
NUM_RESERVED = 4 + len(CONTROL_SYMBOLS)
NUM_BYTE_PIECES = 256
MIN_VOCAB_SIZE = NUM_RESERVED + NUM_BYTE_PIECES + 1  # + one character piece
_CHUNK_CHARS = 2048  # SentencePiece skips training "sentences" over 4192 bytes


class Tokenizer:
  """Encodes text to ids and back; knows how many text bytes each id stands for."""

  def __init__(self, model_proto: bytes, model_path: str = ""):
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.model_path = model_path
    self._control_ids = {s: self._sp.piece_to_id(s) for s in CONTROL_SYMBOLS}
    expected = {s: 4 + i for i, s in enumerate(CONTROL_SYMBOLS)}
    if (self._sp.pad_id(), self._sp.eos_id(), self._sp.bos_id(), self._sp.unk_id(),
        self._control_ids) != (PAD, EOS, BOS, UNK, expected):
      raise ValueError(f"{model_path or 'model'} does not have this codebase's "
                       "reserved ids; retrain it with train_tokenizer().")

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    with open(path, "rb") as f:
      return cls(f.read(), path)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  pad_id, eos_id, bos_id, unk_id = PAD, EOS, BOS, UNK

  def special_id(self, name: str) -> int:
    """Id of a reserved symbol, e.g. special_id("<mask>")."""
    named = {"<pad>": PAD, "</s>": EOS, "<s>": BOS, "<unk>": UNK, **self._control_ids}
    if name not in named:
      raise KeyError(f"{name!r} is not reserved; reserved: {sorted(named)}")
    return named[name]

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def decode(self, ids: Sequence[int]) -> str:
    # Control pieces (pad, bos, eos, <mask>, ...) decode to nothing.
    return self._sp.decode([int(i) for i in ids])

  def token_bytes(self) -> np.ndarray:
    """int32 [vocab_size]: UTF-8 bytes each id adds to decoded text (0 for specials)."""
    sp = self._sp
    out = np.zeros(self.vocab_size, np.int32)
    for i in range(self.vocab_size):
      if sp.is_byte(i):
        out[i] = 1
      elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
        out[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return out


def _training_chunks(texts: Iterable[str]) -> list[str]:
  return [text[start:start + _CHUNK_CHARS]
          for text in texts for start in range(0, len(text), _CHUNK_CHARS)]


def _drop_rare_characters(chunks: list[str], vocab_size: int) -> list[str]:
  """Cuts the rarest characters out of the training text when they don't fit.

  SentencePiece needs a piece per character it sees (and refuses a coverage
  below 0.98), so with more characters than room (e.g. CJK in a 512 vocab) keep
  the most frequent ones in half the room, leaving half for merges. Text is cut
  at the others, so no merge spans them; at encode time they fall back to bytes.
  """
  counts = collections.Counter()
  for chunk in chunks:
    counts.update(chunk)
  room = vocab_size - NUM_RESERVED - NUM_BYTE_PIECES
  if len(counts) <= room:
    return chunks
  rare = [c for c, _ in counts.most_common()[max(1, room // 2):]]
  cut = next(chr(c) for c in range(0xE000, 0x110000) if chr(c) not in counts)
  table = str.maketrans({c: cut for c in rare})
  return [part for chunk in chunks for part in chunk.translate(table).split(cut) if part]


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_path: str) -> Tokenizer:
  """Trains BPE on `texts` and writes the model to `model_path` atomically."""
  if vocab_size < MIN_VOCAB_SIZE:
    raise ConfigError(f"model.vocab_size={vocab_size} is below {MIN_VOCAB_SIZE}: "
                      f"{NUM_RESERVED} reserved ids, {NUM_BYTE_PIECES} byte pieces "
                      "and at least one character piece.")
  chunks = _drop_rare_characters(_training_chunks(texts), vocab_size)
  if not chunks:
    raise ValueError("no text to train the tokenizer on")
  model = io.BytesIO()
  spm.set_random_generator_seed(0)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(chunks), model_writer=model,
        model_type="bpe", vocab_size=vocab_size, hard_vocab_limit=False,
        byte_fallback=True, character_coverage=1.0,
        add_dummy_prefix=False, normalization_rule_name="identity",
        remove_extra_whitespaces=False, max_sentence_length=4 * _CHUNK_CHARS + 16,
        pad_id=PAD, eos_id=EOS, bos_id=BOS, unk_id=UNK,
        control_symbols=list(CONTROL_SYMBOLS), num_threads=1, minloglevel=2)
  except RuntimeError as e:
    raise ConfigError(f"model.vocab_size={vocab_size}: SentencePiece could not train "
                      f"({e}). Raise model.vocab_size.") from e
  _write_atomically(model_path, model.getvalue())
  return Tokenizer(model.getvalue(), model_path)


def _write_atomically(path: str, data: bytes) -> None:
  # Several processes may train the same model: each renames a complete file.
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def tokenizer_path(data_cfg: Any, vocab_size: int) -> str:
  name = (f"{sources.dataset_key(data_cfg)}_{sources.safe_name(data_cfg.train_split)}"
          f"_v{vocab_size}_n{data_cfg.tokenizer_docs}.model")
  return os.path.join(sources.resolve_data_dir(data_cfg), "tokenizers", name)


def get_or_train_tokenizer(data_cfg: Any, vocab_size: int,
                           train_source: Sequence[str]) -> Tokenizer:
  """The cached tokenizer for this dataset, trained on its first docs if missing."""
  path = tokenizer_path(data_cfg, vocab_size)
  if os.path.exists(path):
    return Tokenizer.load(path)
  n = min(int(data_cfg.tokenizer_docs), len(train_source))
  return train_tokenizer(_first_docs(train_source, n), vocab_size, path)


def _first_docs(docs: Sequence[str], n: int, chunk: int = 1024) -> Iterable[str]:
  for start in range(0, n, chunk):  # batched reads are ~3x faster per document
    yield from sources.read_many(docs, list(range(start, min(n, start + chunk))))
