"""Hugging Face tokenizer files behind the interface of lm/data/tokenizer.py's Tokenizer.

An imported checkpoint keeps its own vocabulary: tokenizer.json (WordPiece, BPE,
Unigram; read with the `tokenizers` package) or T5's spiece.model (SentencePiece).
Special ids come from special_tokens_map.json / tokenizer_config.json, else from the
HF model config. `load_tokenizer(workdir)` picks this or the project's own.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

ROLES = {"pad_id": "pad_token", "eos_id": "eos_token", "bos_id": "bos_token", "unk_id": "unk_token"}


def _read(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _token(entry: Any) -> str | None:
  return entry.get("content") if isinstance(entry, dict) else entry


class HFTokenizer:
  """encode/decode/vocab_size/special ids like Tokenizer, over a HF tokenizer directory."""

  def __init__(self, directory: str, hf_config: dict | None = None):
    self.model_path = directory
    tj, sp = os.path.join(directory, "tokenizer.json"), os.path.join(directory, "spiece.model")
    if os.path.exists(tj):
      from tokenizers import Tokenizer as FastTokenizer
      self._fast, self._sp = FastTokenizer.from_file(tj), None
      self._piece_to_id = self._fast.token_to_id
      size = self._fast.get_vocab_size(with_added_tokens=True)
    elif os.path.exists(sp):
      import sentencepiece as spm
      self._fast, self._sp = None, spm.SentencePieceProcessor(model_file=sp)
      self._piece_to_id = self._sp_piece_id
      size = self._sp.get_piece_size()
    else:
      raise FileNotFoundError(f"{directory} has neither tokenizer.json nor spiece.model")
    self._size = max(size, int((hf_config or {}).get("vocab_size", 0)))
    names = {**_read(os.path.join(directory, "tokenizer_config.json")),
             **_read(os.path.join(directory, "special_tokens_map.json"))}
    self._special: dict[str, int] = {}
    for attr, role in ROLES.items():
      tok = _token(names.get(role))
      i = self._piece_to_id(tok) if tok else None
      if i is None:
        i = (hf_config or {}).get(role + "_id")
      if i is not None:
        self._special[tok or role] = int(i)
      setattr(self, attr, int(i) if i is not None else -1)
    if self.pad_id < 0:  # GPT-2 has no pad token: padding is never attended, any id does
      self.pad_id = max(self.eos_id, 0)
    extras = [_token(v) for k, v in names.items() if k.endswith("_token") and k not in ROLES.values()]
    extras += [_token(t) for t in names.get("additional_special_tokens") or []]
    if self._fast is not None:  # tokenizer.json's own special added tokens ([MASK], <|endoftext|>)
      extras += [t.content for t in self._fast.get_added_tokens_decoder().values() if t.special]
    for tok in extras:
      if isinstance(tok, str) and self._piece_to_id(tok) is not None:
        self._special[tok] = self._piece_to_id(tok)

  def _sp_piece_id(self, piece: str) -> int | None:
    i = self._sp.piece_to_id(piece)  # unknown pieces map to <unk>
    return i if self._sp.id_to_piece(i) == piece else None

  @classmethod
  def load(cls, directory: str, hf_config: dict | None = None) -> "HFTokenizer":
    return cls(directory, hf_config)

  @property
  def vocab_size(self) -> int:
    return self._size

  def special_id(self, name: str) -> int:
    if name not in self._special:
      raise KeyError(f"{name!r} is not a special token of {self.model_path}; "
                     f"it has: {sorted(self._special)}")
    return self._special[name]

  def encode(self, text: str) -> list[int]:
    """Ids of the text alone (no [CLS]/</s> added, like Tokenizer.encode)."""
    if self._sp is not None:
      return self._sp.encode(text, out_type=int)
    return self._fast.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if self._sp is not None:
      return self._sp.decode([i for i in ids if i < self._sp.get_piece_size()])
    return self._fast.decode(ids, skip_special_tokens=True)

  def token_bytes(self) -> np.ndarray:
    """UTF-8 bytes of each id decoded alone (0 for specials); approximate for byte pieces."""
    out = np.zeros(self.vocab_size, np.int32)
    special = set(self._special.values())
    for i in range(self.vocab_size):
      if i not in special:
        out[i] = len(self.decode([i]).encode("utf-8"))
    return out


def load_tokenizer(workdir: str):
  """A WORKDIR's tokenizer: tokenizer.model (this project's), tokenizer/ (an import), or None."""
  from lm.data.tokenizer import Tokenizer
  path = os.path.join(workdir, "tokenizer.model")
  if os.path.exists(path):
    return Tokenizer.load(path)
  directory = os.path.join(workdir, "tokenizer")
  if os.path.isdir(directory):
    return HFTokenizer.load(directory, _read(os.path.join(workdir, "hf_config.json")))
  return None
