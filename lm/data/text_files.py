"""A tfds builder for the user's own text files (.txt, or .jsonl with a `text` field).

Documents: a whole .txt file (mode "file") or each blank-line-separated block
(mode "blank_line"); each non-empty line of a .jsonl file is one document. Files
are read in sorted path order. A document goes to validation when a hash of its
index falls below `eval_fraction` (at least one document goes each way), so the
split is stable and independent of the text. The config name hashes the files'
paths, sizes and mtimes: edited files build a new dataset instead of reusing a
stale one.
"""
from __future__ import annotations

import glob as glob_lib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

from lm.config import ConfigError
from lm.data import tfds_util

MODES = ("file", "blank_line")
_BLANK_LINE = re.compile(r"\r?\n[ \t\r]*\n")


def list_files(pattern: str) -> list[str]:
  """Regular files matching the glob (`**` recurses), sorted."""
  pattern = os.path.abspath(os.path.expanduser(pattern))
  return sorted(p for p in glob_lib.glob(pattern, recursive=True) if os.path.isfile(p))


def read_documents(files: Sequence[str], mode: str) -> Iterator[str]:
  """The documents of `files`, in order; raises ConfigError on unreadable files."""
  for path in files:
    try:
      with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
          yield from _jsonl_docs(f, path)
          continue
        text = f.read()
    except UnicodeDecodeError as e:
      raise ConfigError(f"data.text_glob: {path} is not UTF-8 text ({e}). Convert it "
                        "to UTF-8 or exclude it from the glob.") from e
    if mode == "file":
      if text.strip():
        yield text
    else:
      for block in _BLANK_LINE.split(text):
        block = block.strip("\r\n")
        if block.strip():
          yield block


def _jsonl_docs(f, path: str) -> Iterator[str]:
  for n, line in enumerate(f, 1):
    if not line.strip():
      continue
    try:
      text = json.loads(line)["text"]
    except (ValueError, KeyError, TypeError) as e:
      raise ConfigError(f"data.text_glob: {path}:{n} is not a JSON object with a "
                        f"'text' field ({e!r}). Fix the line or exclude the file.") from e
    if not isinstance(text, str):
      raise ConfigError(f"data.text_glob: {path}:{n}: 'text' must be a string.")
    if text.strip():
      yield text


def _unit_hash(index: int) -> float:
  digest = hashlib.sha256(f"doc{index}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def eval_indices(num_docs: int, eval_fraction: float) -> set[int]:
  """Document indices held out for validation: >= 1, and never all of them."""
  hashes = [_unit_hash(i) for i in range(num_docs)]
  chosen = {i for i, h in enumerate(hashes) if h < eval_fraction}
  if not chosen:
    chosen = {min(range(num_docs), key=hashes.__getitem__)}
  if len(chosen) == num_docs and num_docs > 1:
    chosen.discard(max(chosen, key=hashes.__getitem__))
  return chosen


def check_text_config(pattern: str, mode: str, eval_fraction: float) -> list[str]:
  """Validates the text settings before anything is built; returns the files."""
  if mode not in MODES:
    raise ConfigError(f"data.text_mode={mode!r} is not one of {MODES}.")
  if not 0.0 < eval_fraction < 1.0:
    raise ConfigError(f"data.eval_fraction={eval_fraction} must be in (0, 1), "
                      "e.g. 0.05 holds out 5% of the documents for validation.")
  if not pattern:
    raise ConfigError("data.text_glob is empty: with data.dataset='text', set it to a "
                      "glob of your .txt or .jsonl files, e.g. "
                      "--config.data.text_glob='/path/to/corpus/*.txt'.")
  files = list_files(pattern)
  if not files:
    raise ConfigError(f"data.text_glob={pattern!r} matches no files. Check the path "
                      "(use an absolute path; '**' matches subdirectories).")
  return files


def count_documents(files: Sequence[str], mode: str, at_least: int) -> int:
  """Counts documents, stopping early at `at_least` (cheap check before a build)."""
  n = 0
  for _ in read_documents(files, mode):
    n += 1
    if n >= at_least:
      break
  return n


class TextFilesConfig(tfds.core.BuilderConfig):
  """Which files, how they split into documents, and the validation share."""

  def __init__(self, *, glob: str, mode: str = "file", eval_fraction: float = 0.05):
    files = list_files(glob)
    h = hashlib.sha256(repr((os.path.abspath(os.path.expanduser(glob)), mode,
                             float(eval_fraction))).encode())
    for path in files:
      st = os.stat(path)
      h.update(f"\n{path}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    super().__init__(name=f"{mode}-{h.hexdigest()[:16]}",
                     description=f"{len(files)} files matching {glob}")
    self.glob = glob
    self.mode = mode
    self.eval_fraction = float(eval_fraction)
    self.files = files


class TextFiles(tfds_util.QuietBuilderMixin, tfds.core.GeneratorBasedBuilder):
  """tfds builder over local text files (splits train, validation; feature text)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"Documents from {cfg.glob} (mode {cfg.mode}).",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    docs = list(read_documents(cfg.files, cfg.mode))
    if len(docs) < 2:
      raise ConfigError(f"data.text_glob={cfg.glob!r} holds {len(docs)} document(s); "
                        "need at least 2 (one for validation).")
    held_out = eval_indices(len(docs), cfg.eval_fraction)
    train = [(i, d) for i, d in enumerate(docs) if i not in held_out]
    valid = [(i, d) for i, d in enumerate(docs) if i in held_out]
    return {"train": self._generate_examples(train),
            "validation": self._generate_examples(valid)}

  def _generate_examples(self, docs):
    for i, text in docs:
      yield i, {"text": text}
