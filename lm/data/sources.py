"""Random-access document sources: `data.dataset` -> a sequence of strings.

"synthetic" and "text" are built locally on first use (tfds, array_record);
any other name is a registered tfds dataset that must already be prepared in
the data dir, because nothing downloads at run time.
"""
from __future__ import annotations

import functools

import os
import re
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from lm.config import ConfigError
from lm.data import instructions, synthetic, text_files, tfds_util

LOCAL_SPLITS = ("train", "validation")


def resolve_data_dir(data_cfg: Any) -> str:
  """data.data_dir, else $LM_DATA_DIR, else ~/.cache/lm_scaling/data."""
  path = (data_cfg.data_dir or os.environ.get("LM_DATA_DIR")
          or "~/.cache/lm_scaling/data")
  return os.path.abspath(os.path.expanduser(path))


class TextSource(Sequence[str]):
  """Documents of one split as str, read on demand from a tfds data source."""

  def __init__(self, records: Sequence[Any], field: str):
    self._records = records
    self._field = field

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> str:
    if not -len(self) <= index < len(self):
      raise IndexError(index)
    return _as_str(self._records[index % len(self)][self._field])

  def __getitems__(self, indices: Sequence[int]) -> list[str]:
    """One batched read (array_record reads the records in parallel)."""
    try:
      records = self._records.__getitems__(list(indices))
    except TypeError:
      # tfds.testing.mock_data (tfds 4.9.10) mocks the batched read with an
      # unbound function that cannot be called; read one by one instead.
      records = [self._records[i] for i in indices]
    return [_as_str(r[self._field]) for r in records]


def read_many(docs: Sequence[str], indices: list[int]) -> list[str]:
  """docs[i] for each index, in one batched read when the source has one."""
  getitems = getattr(docs, "__getitems__", None)
  return list(getitems(indices)) if getitems else [docs[i] for i in indices]


def _as_str(value: Any) -> str:
  # array_record gives bytes; tfds.testing.mock_data gives str.
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def synthetic_config(data_cfg: Any) -> synthetic.SyntheticConfig:
  s = data_cfg.synthetic
  return synthetic.SyntheticConfig(
      seed=s.seed, num_words=s.num_words, branching=s.branching,
      end_prob=s.end_prob, train_docs=s.train_docs, eval_docs=s.eval_docs, topics=s.topics)


def text_config(data_cfg: Any) -> text_files.TextFilesConfig:
  return text_files.TextFilesConfig(glob=data_cfg.text_glob, mode=data_cfg.text_mode,
                                    eval_fraction=data_cfg.eval_fraction)


def instructions_config(data_cfg: Any) -> instructions.InstructionsConfig:
  return instructions.InstructionsConfig(glob=data_cfg.instructions_glob,
                                         validation_glob=data_cfg.instructions_validation_glob,
                                         eval_fraction=data_cfg.eval_fraction)


def dataset_key(data_cfg: Any) -> str:
  """A file-name-safe name of the exact dataset (settings included)."""
  if data_cfg.dataset == "synthetic":
    key = f"synthetic_{synthetic_config(data_cfg).name}"
  elif data_cfg.dataset == "text":
    key = f"text_{text_config(data_cfg).name}"
  elif data_cfg.dataset == "instructions":
    key = instructions_config(data_cfg).name
  else:
    key = data_cfg.dataset
  return safe_name(key)


def safe_name(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-")


def _split_field(data_cfg: Any, split: str) -> str:
  if split == data_cfg.train_split:
    return "data.train_split"
  return "data.eval_split" if split == data_cfg.eval_split else "split"


def _base_split(split: str) -> str:
  # tfds split syntax allows "train[:90%]" and "train+validation".
  return re.split(r"[\[+]", split, maxsplit=1)[0].strip()


def check_source_config(data_cfg: Any) -> None:
  """The checks that need no data on disk; raises ConfigError."""
  if data_cfg.dataset == "synthetic":
    s = data_cfg.synthetic
    if s.num_words < 1:
      raise ConfigError(f"data.synthetic.num_words={s.num_words} must be >= 1.")
    if not 1 <= s.branching <= s.num_words:
      raise ConfigError(f"data.synthetic.branching={s.branching} must be in "
                        f"[1, data.synthetic.num_words={s.num_words}].")
    if not 0.0 < s.end_prob <= 1.0:
      raise ConfigError(f"data.synthetic.end_prob={s.end_prob} must be in (0, 1].")
    if not isinstance(s.topics, int) or s.topics < 1:
      raise ConfigError(f"data.synthetic.topics={s.topics!r} must be an integer >= 1.")
    if s.train_docs < 1 or s.eval_docs < 1:
      raise ConfigError("data.synthetic.train_docs and data.synthetic.eval_docs "
                        "must be >= 1.")
  elif data_cfg.dataset == "text":
    text_files.check_text_config(data_cfg.text_glob, data_cfg.text_mode,
                                 data_cfg.eval_fraction)
  elif data_cfg.dataset == "instructions":
    instructions.check_config(data_cfg.instructions_glob, data_cfg.instructions_validation_glob,
                              data_cfg.eval_fraction)
  elif not data_cfg.dataset:
    raise ConfigError("data.dataset is empty: use 'synthetic', 'text' or a "
                      "registered tfds name such as 'lm1b'.")
  if data_cfg.dataset in ("synthetic", "text", "instructions"):
    for split in (data_cfg.train_split, data_cfg.eval_split):
      if _base_split(split) not in LOCAL_SPLITS:
        raise ConfigError(f"{_split_field(data_cfg, split)}={split!r}: dataset "
                          f"{data_cfg.dataset!r} has splits {list(LOCAL_SPLITS)}.")


@functools.cache
def _eval_floor_cached(builder_dir: str, chain_args: tuple, topics: int, texts: tuple) -> float:
  del builder_dir  # part of the cache key only
  bits = sum(-synthetic.log2_prob(*chain_args, topics, t) for t in texts)
  return bits / sum(len(t.encode()) for t in texts)


def _eval_floor(builder, data_cfg: Any) -> float:
  """-log2 P(validation documents) / their bytes under the source itself.

  The source's own score on the held-out documents: a finite sample sits a little
  above or below the asymptotic floor (a few 0.1% at 500 documents), and every
  model is scored on the same documents, so this is the floor to hold eval losses to.
  """
  cfg = synthetic_config(data_cfg)
  texts = tuple(TextSource(builder.as_data_source(split="validation"), "text"))
  return _eval_floor_cached(builder.data_dir, cfg.chain_args, cfg.topics, texts)


def open_text_source(data_cfg: Any, split: str) -> tuple[Sequence[str], dict]:
  """Documents of `split` as a random-access sequence of str, plus dataset metadata.

  The metadata holds {"entropy_floor_bpb": float} for the synthetic corpus and
  is empty otherwise.
  """
  check_source_config(data_cfg)
  data_dir = resolve_data_dir(data_cfg)
  if data_cfg.dataset == "synthetic":
    builder = tfds_util.prepared_builder(synthetic.SyntheticCorpus,
                                         synthetic_config(data_cfg), data_dir)
    docs = builder.as_data_source(split=split)
    meta = {"entropy_floor_bpb": float(builder.info.metadata["entropy_floor_bpb"]),
            "eval_floor_bpb": _eval_floor(builder, data_cfg)}
    return TextSource(docs, "text"), meta
  if data_cfg.dataset == "text":
    config = text_config(data_cfg)
    if text_files.count_documents(config.files, config.mode, at_least=2) < 2:
      raise ConfigError(f"data.text_glob={data_cfg.text_glob!r} holds fewer than 2 "
                        "non-empty documents; need at least 2 (one is held out for "
                        "validation). Add files or use data.text_mode='blank_line'.")
    builder = tfds_util.prepared_builder(text_files.TextFiles, config, data_dir)
    return TextSource(builder.as_data_source(split=split), "text"), {}
  if data_cfg.dataset == "instructions":
    builder = tfds_util.prepared_builder(instructions.Instructions,
                                         instructions_config(data_cfg), data_dir)
    return TextSource(builder.as_data_source(split=split), "text"), {}
  return _open_registered(data_cfg, split, data_dir), {}


def _open_registered(data_cfg: Any, split: str, data_dir: str) -> TextSource:
  name = data_cfg.dataset
  build_cmd = f"tfds build {name} --data_dir={data_dir} --file_format=array_record"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except (tfds.core.DatasetNotFoundError, ValueError) as e:
    hint = re.search(r"Did you mean: .*\?", str(e))
    raise ConfigError(
        f"data.dataset={name!r} is neither 'synthetic', 'text' nor a tfds dataset "
        f"found in data.data_dir={data_dir!r}." + (f" {hint.group(0)}" if hint else "")
        + " Use a registered tfds name (e.g. 'lm1b', 'c4/en').") from e
  features = builder.info.features
  if data_cfg.text_field not in features.keys():
    raise ConfigError(f"data.text_field={data_cfg.text_field!r} is not a feature of "
                      f"{name}; it has {sorted(features.keys())}.")
  field = _split_field(data_cfg, split)
  if tfds_util.is_prepared(builder):
    splits = list(builder.info.splits.keys())
    if _base_split(split) not in splits:
      raise ConfigError(f"{field}={split!r} is not a split of {name}; it has {splits}.")
    formats = {f.value for f in builder.info.available_file_formats()}
    if tfds_util.FILE_FORMAT not in formats:
      raise ConfigError(
          f"data.dataset={name!r} in {builder.data_dir} is stored as {sorted(formats)}, "
          f"which has no random access. Rebuild it: {build_cmd}")
  try:
    records = builder.as_data_source(split=split)
  except Exception as e:  # pylint: disable=broad-except
    # tfds reports a missing dataset as a file-format problem; say what it is.
    if tfds_util.is_prepared(builder):
      raise
    raise ConfigError(
        f"data.dataset={name!r} is not prepared in data.data_dir={data_dir!r} "
        f"(nothing downloads at run time). Prepare it once with: {build_cmd}  "
        "or point data.data_dir (or $LM_DATA_DIR) at a directory that has it.") from e
  return TextSource(records, data_cfg.text_field)
