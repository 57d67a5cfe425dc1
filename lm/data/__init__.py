"""Data for a run: tfds source -> tokenizer -> packed per-process batches.

`build_data(cfg)` is what the training loop calls; it checks the config first
(ConfigError naming the field and the fix) and only then builds anything.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lm.config import ConfigError
from lm.data.loader import PackedLoader, eval_batches
from lm.data.sources import check_source_config, open_text_source
from lm.data.tokenizer import MIN_VOCAB_SIZE, NUM_BYTE_PIECES, NUM_RESERVED, Tokenizer
from lm.data.tokenizer import get_or_train_tokenizer

__all__ = ["DataBundle", "build_data", "PackedLoader", "Tokenizer", "eval_batches",
           "open_text_source"]


@dataclasses.dataclass
class DataBundle:
  tokenizer: Tokenizer
  train: PackedLoader  # per-process train batches, resumable
  eval_batches: list[dict[str, np.ndarray]]  # per-process eval batches (same every call)
  metadata: dict  # e.g. {"entropy_floor_bpb": 1.23} for synthetic


def check_data_config(cfg: Any, process_count: int = 1) -> None:
  """Every data check that needs no data; raises ConfigError."""
  d = cfg.data
  if process_count < 1:
    raise ValueError(f"process_count={process_count} must be >= 1")
  if cfg.train.batch_size < 1 or cfg.train.batch_size % process_count:
    raise ConfigError(f"train.batch_size={cfg.train.batch_size} (the global batch) must "
                      f"be a positive multiple of the process count {process_count}.")
  if d.seq_len < 2:
    raise ConfigError(f"data.seq_len={d.seq_len} must be >= 2.")
  if cfg.model.vocab_size < MIN_VOCAB_SIZE:
    raise ConfigError(
        f"model.vocab_size={cfg.model.vocab_size} must be >= {MIN_VOCAB_SIZE}: the "
        f"tokenizer reserves {NUM_RESERVED} ids (pad, eos, bos, unk and control tokens) "
        f"and {NUM_BYTE_PIECES} byte pieces (so any text encodes), plus at least one "
        "character piece. Use e.g. 512.")
  if d.tokenizer_docs < 1:
    raise ConfigError(f"data.tokenizer_docs={d.tokenizer_docs} must be >= 1.")
  if cfg.train.eval_batches < 0:
    raise ConfigError(f"train.eval_batches={cfg.train.eval_batches} must be >= 0.")
  check_source_config(d)


def build_data(cfg: Any, process_index: int = 0, process_count: int = 1) -> DataBundle:
  """Builds (or reuses) the dataset and tokenizer; returns this process's data."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  check_data_config(cfg, process_count)
  d = cfg.data
  train_docs, metadata = open_text_source(d, d.train_split)
  eval_docs, _ = open_text_source(d, d.eval_split)
  if len(train_docs) < process_count:
    raise ConfigError(f"{d.train_split!r} of data.dataset={d.dataset!r} has "
                      f"{len(train_docs)} documents, fewer than the {process_count} "
                      "processes that each need some: use more data.")
  tokenizer = get_or_train_tokenizer(d, cfg.model.vocab_size, train_docs)
  batch_size = cfg.train.batch_size // process_count
  train = PackedLoader(train_docs, tokenizer, d.seq_len, batch_size, d.shuffle_seed,
                       process_index, process_count)
  evals = eval_batches(eval_docs, tokenizer, d.seq_len, batch_size,
                       cfg.train.eval_batches, process_index, process_count)
  return DataBundle(tokenizer, train, evals, metadata)
