"""A tfds builder for local instruction data (JSONL), the source of supervised fine-tuning.

Each non-empty line is one conversation in either shape:
  {"prompt": "...", "response": "..."}                   (a user turn, an assistant turn)
  {"messages": [{"role": "system|user|assistant|tool", "content": "..."}, ...]}
A bad line raises ConfigError naming file:line and the field. Each example is
stored as the canonical JSON of its messages (feature `text`), so the generic
text sources and loaders read it; lm/data/sft.py renders it with lm/chat.py.

Splits: `validation_glob` set -> those files are the validation split; else a
conversation goes to validation when a hash of its index falls below
`eval_fraction` (stable, independent of the text; lm/data/text_files.py).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence

import tensorflow_datasets as tfds

from lm import chat
from lm.config import ConfigError
from lm.data import tfds_util
from lm.data.text_files import eval_indices, list_files


def parse_line(line: str, where: str) -> list[dict]:
  """The messages of one JSONL line; ConfigError naming `where` (file:line) and the field."""
  try:
    obj = json.loads(line)
  except ValueError as e:
    raise ConfigError(f"{where}: not valid JSON ({e})") from e
  if not isinstance(obj, dict):
    raise ConfigError(f"{where}: expected a JSON object with 'prompt'/'response' or 'messages'")
  if "messages" in obj:
    try:
      messages = chat.validate_messages(obj["messages"], "messages")
    except ValueError as e:
      raise ConfigError(f"{where}: field {e}") from e
    if not any(m["role"] == "assistant" for m in messages):
      raise ConfigError(f"{where}: field messages has no 'assistant' turn to learn")
    return messages
  for field in ("prompt", "response"):
    if not isinstance(obj.get(field), str):
      raise ConfigError(f"{where}: field {field!r} is missing or not a string "
                        "(each line needs 'prompt' and 'response' strings, or 'messages')")
  return chat.from_prompt_response(obj["prompt"], obj["response"])


def read_conversations(files: Sequence[str]) -> Iterator[list[dict]]:
  for path in files:
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          yield parse_line(line, f"{path}:{n}")


def check_config(glob: str, validation_glob: str, eval_fraction: float) -> tuple[list, list]:
  """(train files, validation files) after the checks that need no build."""
  if not glob:
    raise ConfigError("data.instructions_glob is empty: with data.dataset='instructions', set it "
                      "to a glob of .jsonl files ({'prompt','response'} or {'messages'} lines).")
  files = list_files(glob)
  if not files:
    raise ConfigError(f"data.instructions_glob={glob!r} matches no files; use an absolute path.")
  valid = list_files(validation_glob) if validation_glob else []
  if validation_glob and not valid:
    raise ConfigError(f"data.instructions_validation_glob={validation_glob!r} matches no files.")
  if not validation_glob and not 0.0 < eval_fraction < 1.0:
    raise ConfigError(f"data.eval_fraction={eval_fraction} must be in (0, 1) (the share of "
                      "conversations held out), or set data.instructions_validation_glob.")
  return files, valid


class InstructionsConfig(tfds.core.BuilderConfig):
  """Which files and how they split; the name hashes paths, sizes and mtimes."""

  def __init__(self, *, glob: str, validation_glob: str = "", eval_fraction: float = 0.05):
    files, valid = check_config(glob, validation_glob, eval_fraction)
    h = hashlib.sha256(repr((glob, validation_glob, float(eval_fraction))).encode())
    for path in files + valid:
      st = os.stat(path)
      h.update(f"\n{path}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    super().__init__(name=f"instr-{h.hexdigest()[:16]}", description=f"{len(files)} files")
    self.glob, self.validation_glob = glob, validation_glob
    self.eval_fraction = float(eval_fraction)
    self.files, self.validation_files = files, valid


class Instructions(tfds_util.QuietBuilderMixin, tfds.core.GeneratorBasedBuilder):
  """Conversations (feature `text`: JSON list of messages); splits train, validation."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description="Instruction conversations from local JSONL.",
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    convs = [json.dumps(m, ensure_ascii=False) for m in read_conversations(cfg.files)]
    if cfg.validation_files:
      train = list(enumerate(convs))
      valid = list(enumerate(json.dumps(m, ensure_ascii=False)
                             for m in read_conversations(cfg.validation_files)))
    else:
      if len(convs) < 2:
        raise ConfigError(f"data.instructions_glob={cfg.glob!r} holds {len(convs)} conversation(s);"
                          " need at least 2 (one for validation).")
      held = eval_indices(len(convs), cfg.eval_fraction)
      train = [(i, c) for i, c in enumerate(convs) if i not in held]
      valid = [(i, c) for i, c in enumerate(convs) if i in held]
    return {"train": self._generate_examples(train), "validation": self._generate_examples(valid)}

  def _generate_examples(self, items):
    for i, text in items:
      yield i, {"text": text}
