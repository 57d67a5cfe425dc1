"""Data for a run: tfds source -> tokenizer -> objective preprocessing -> packed
per-process batches.

`build_data(cfg)` is what the training loop calls; it checks the config first
(ConfigError naming the field and the fix) and only then builds anything.
cfg.objective picks the preprocessing and the batch keys:
  clm              PackedLoader: inputs, targets, segment_ids, positions, weights
  prefix_lm        + prefix_mask (lm/data/prefix.py)
  mlm              inputs, targets, weights, token_types, segment_ids, positions (lm/data/mlm.py)
  mlm_nsp          + nsp_labels, nsp_weights
  span_corruption  encoder_{inputs,segment_ids,positions}, decoder_{inputs,targets,weights,
  seq2seq            segment_ids,positions} (lm/data/spans.py, lm/data/prefix.py)
  sft              CLM's keys from conversations, weights on assistant tokens only (lm/data/sft.py)
  sft_seq2seq      encoder-decoder keys: history -> assistant turn
Every array is [per-process batch, length]; encoder-decoder decoder rows have
`decoder_seq_len(cfg)` positions, everything else data.seq_len.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lm.config import ConfigError
from lm.data import examples, mlm, prefix, spans
from lm.data.loader import PackedLoader, eval_batches
from lm.data.sources import check_source_config, open_text_source
from lm.data.tokenizer import MIN_VOCAB_SIZE, NUM_BYTE_PIECES, NUM_RESERVED, Tokenizer
from lm.data.tokenizer import get_or_train_tokenizer

__all__ = ["DataBundle", "build_data", "PackedLoader", "Tokenizer", "eval_batches",
           "open_text_source", "OBJECTIVE_DATA", "decoder_seq_len"]

OBJECTIVE_DATA = ("clm", "prefix_lm", "mlm", "mlm_nsp", "span_corruption", "seq2seq", "sft",
                  "sft_seq2seq")
ENCODER_DECODER_DATA = ("span_corruption", "seq2seq", "sft_seq2seq")
_STREAMS = {name: i for i, name in enumerate(OBJECTIVE_DATA)}


@dataclasses.dataclass
class DataBundle:
  tokenizer: Tokenizer
  train: Any  # per-process train batches, resumable (PackedLoader or examples.ExampleLoader)
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
  if cfg.model.vocab_size < MIN_VOCAB_SIZE and imported_tokenizer_workdir(cfg) is None:
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
  _check_objective_data(cfg)


def _check_objective_data(cfg: Any) -> None:
  d, objective = cfg.data, cfg.objective
  if objective not in OBJECTIVE_DATA:
    raise ConfigError(f"objective={objective!r} has no data preprocessing; use one of: "
                      f"{', '.join(OBJECTIVE_DATA)}.")
  from lm.objectives import check_family  # objectives import jax: only when checking
  check_family(objective, cfg.model.family)
  if objective in ("mlm", "mlm_nsp"):
    if not 0.0 < d.mlm_rate <= 1.0:
      raise ConfigError(f"data.mlm_rate={d.mlm_rate} must be in (0, 1] (BERT: 0.15).")
    if (d.mlm_mask_fraction < 0 or d.mlm_random_fraction < 0
        or d.mlm_mask_fraction + d.mlm_random_fraction > 1.0):
      raise ConfigError(
          f"data.mlm_mask_fraction={d.mlm_mask_fraction} and data.mlm_random_fraction="
          f"{d.mlm_random_fraction} must be >= 0 and sum to <= 1 (BERT: 0.8 and 0.1).")
    if d.seq_len < 5:
      raise ConfigError(f"data.seq_len={d.seq_len} is too short for [CLS] A [SEP] B [SEP]; use >= 5.")
    if d.nsp_loss_weight < 0:
      raise ConfigError(f"data.nsp_loss_weight={d.nsp_loss_weight} must be >= 0.")
  if objective == "span_corruption":
    if not 0.0 < d.noise_density < 1.0:
      raise ConfigError(f"data.noise_density={d.noise_density} must be in (0, 1) (T5: 0.15).")
    if d.mean_span_length < 1.0:
      raise ConfigError(f"data.mean_span_length={d.mean_span_length} must be >= 1 (T5: 3).")
  if objective in ("prefix_lm", "seq2seq") and not 0.0 <= d.prefix_fraction < 1.0:
    raise ConfigError(f"data.prefix_fraction={d.prefix_fraction} must be in [0, 1) "
                      "(0 = a uniformly random split point per example).")
  if d.target_seq_len < 0 or (d.target_seq_len == 1):
    raise ConfigError(f"data.target_seq_len={d.target_seq_len} must be 0 (auto) or >= 2.")
  if objective in ENCODER_DECODER_DATA:
    target = decoder_seq_len(cfg)
    if cfg.model.position == "learned" and target > cfg.model.max_len:
      raise ConfigError(f"the decoder rows have {target} positions (data.target_seq_len) but "
                        f"model.max_len={cfg.model.max_len}; raise model.max_len or set "
                        "data.target_seq_len lower.")


def _span_spec(d: Any) -> spans.SpanSpec:
  # lengths only: the ids do not matter here
  return spans.SpanSpec(float(d.noise_density), float(d.mean_span_length),
                        tuple(range(spans.NUM_SENTINELS)), 1, 2)


def decoder_seq_len(cfg: Any) -> int:
  """Decoder row length of an encoder-decoder objective (data.target_seq_len, or auto)."""
  d = cfg.data
  if d.target_seq_len:
    return int(d.target_seq_len)
  if cfg.objective == "span_corruption":
    spec = _span_spec(d)
    return spans.targets_length(spec, spans.max_raw_length(spec, d.seq_len))
  return int(d.seq_len)


def _example_seed(cfg: Any, split: str) -> int:
  stream = [cfg.data.shuffle_seed, _STREAMS[cfg.objective], 0 if split == "train" else 1]
  return int(np.random.SeedSequence(stream).generate_state(1)[0])


def preprocessing(cfg: Any, tokenizer: Tokenizer, batch_size: int):
  """(tokenize, make_examples, new_packer) of a non-CLM objective."""
  d, objective, seq_len = cfg.data, cfg.objective, cfg.data.seq_len
  if objective in ("mlm", "mlm_nsp"):
    spec = mlm.MaskingSpec.from_config(d, tokenizer)
    if objective == "mlm":
      fields = mlm.MLM_FIELDS
      tokenize = examples.text_ids
      make = lambda ids, rng, other: mlm.mlm_examples(ids, spec, rng, seq_len)
    else:
      fields = mlm.NSP_FIELDS
      cap = max(1, (seq_len - 3) // 2)
      tokenize = lambda tok, text: mlm.capped_sentences(examples.sentence_ids(tok, text), cap)
      make = lambda sents, rng, other: mlm.nsp_examples(sents, spec, rng, other, seq_len)
    return tokenize, make, lambda: examples.RowPacker(batch_size, {"": seq_len}, fields)
  if objective in ("sft", "sft_seq2seq"):
    from lm.data import sft
    return sft.preprocessing(cfg, tokenizer, batch_size, decoder_seq_len(cfg))
  if objective == "prefix_lm":
    from lm.data.packing import clm_ids
    make = lambda ids, rng, other: prefix.prefix_lm_examples(ids, seq_len, d.prefix_fraction, rng)
    return clm_ids, make, lambda: examples.RowPacker(batch_size, {"": seq_len}, prefix.PREFIX_FIELDS)
  target_len = decoder_seq_len(cfg)
  sides = {"encoder_": seq_len, "decoder_": target_len}
  new_packer = lambda: examples.RowPacker(batch_size, sides, spans.SEQ2SEQ_FIELDS)
  if objective == "span_corruption":
    spec = spans.SpanSpec.from_config(d, tokenizer)
    max_raw = spans.max_raw_length(spec, seq_len, target_len)
    make = lambda ids, rng, other: spans.span_examples(ids, spec, rng, max_raw)
  else:  # seq2seq
    max_piece = min(seq_len, target_len) - 1
    make = lambda ids, rng, other: prefix.seq2seq_pair_examples(
        ids, max_piece, d.prefix_fraction, tokenizer.eos_id, tokenizer.bos_id, rng)
  return examples.text_ids, make, new_packer


def imported_tokenizer_workdir(cfg: Any) -> str | None:
  """The train.init_from WORKDIR when it is an imported HF checkpoint (lm/interop) with its
  tokenizer/ and no data.tokenizer_path overrides it; else None."""
  import os
  if cfg.data.tokenizer_path or not cfg.train.init_from:
    return None
  src = os.path.abspath(cfg.train.init_from)
  for _ in range(3):  # WORKDIR, WORKDIR/checkpoints, WORKDIR/checkpoints/<step>
    if os.path.isdir(os.path.join(src, "tokenizer")):
      return src
    src = os.path.dirname(src)
  return None


def run_tokenizer(cfg: Any, train_docs) -> Tokenizer:
  """data.tokenizer_path; else the train.init_from run's tokenizer; else the cached/trained one."""
  import os
  path = cfg.data.tokenizer_path
  imported = imported_tokenizer_workdir(cfg)
  if imported is not None:  # its own vocabulary, not this project's
    from lm.data.hf_tokenizer import load_tokenizer
    return load_tokenizer(imported)
  if not path and cfg.train.init_from:
    src = os.path.abspath(cfg.train.init_from)
    for _ in range(3):  # WORKDIR, WORKDIR/checkpoints, WORKDIR/checkpoints/<step>
      if os.path.exists(os.path.join(src, "tokenizer.model")):
        path = os.path.join(src, "tokenizer.model")
        break
      src = os.path.dirname(src)
    else:
      raise ConfigError(f"train.init_from={cfg.train.init_from!r} has no tokenizer.model in its "
                        "WORKDIR; set data.tokenizer_path to the pretrained run's tokenizer.")
  if path:
    if not os.path.exists(path):
      raise ConfigError(f"data.tokenizer_path={path!r} does not exist.")
    return Tokenizer.load(path)
  return get_or_train_tokenizer(cfg.data, cfg.model.vocab_size, train_docs)


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
  if cfg.objective == "mlm_nsp" and min(len(train_docs), len(eval_docs)) < 2:
    raise ConfigError("objective='mlm_nsp' needs at least 2 documents in each split (NotNext "
                      "pairs take B from another document): use more data.")
  tokenizer = run_tokenizer(cfg, train_docs)
  batch_size = cfg.train.batch_size // process_count
  if cfg.objective == "clm":
    train = PackedLoader(train_docs, tokenizer, d.seq_len, batch_size, d.shuffle_seed,
                         process_index, process_count)
    evals = eval_batches(eval_docs, tokenizer, d.seq_len, batch_size,
                         cfg.train.eval_batches, process_index, process_count)
    return DataBundle(tokenizer, train, evals, metadata)
  tokenize, make, new_packer = preprocessing(cfg, tokenizer, batch_size)
  train = examples.ExampleLoader(
      train_docs, tokenizer, tokenize, make, new_packer, cfg.objective, d.shuffle_seed,
      process_index, process_count, repeat=True, example_seed=_example_seed(cfg, "train"))
  eval_loader = examples.ExampleLoader(
      eval_docs, tokenizer, tokenize, make, new_packer, cfg.objective, None,
      process_index, process_count, repeat=False, example_seed=_example_seed(cfg, "eval"))
  evals = examples.fixed_batches(eval_loader, cfg.train.eval_batches)
  return DataBundle(tokenizer, train, evals, metadata)
