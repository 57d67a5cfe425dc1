"""The user's own text files as a tfds dataset: modes, jsonl, split, errors."""
import json
import os

import pytest

from lm import config
from lm.data import sources, text_files


def _data_cfg(tmp_path, glob, mode="file", eval_fraction=0.25):
  cfg = config.base_config()
  cfg.data.dataset = "text"
  cfg.data.data_dir = str(tmp_path / "data")
  cfg.data.text_glob = glob
  cfg.data.text_mode = mode
  cfg.data.eval_fraction = eval_fraction
  return cfg.data


def _all_docs(d):
  train, meta = sources.open_text_source(d, "train")
  valid, _ = sources.open_text_source(d, "validation")
  assert meta == {}
  return [train[i] for i in range(len(train))], [valid[i] for i in range(len(valid))]


def _write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")


def test_file_mode_one_doc_per_file(tmp_path):
  texts = [f"File {i}.\n\nSecond paragraph ü {i}\n" for i in range(8)]
  for i, t in enumerate(texts):
    _write(tmp_path / "corpus" / f"{i}.txt", t)
  _write(tmp_path / "corpus" / "empty.txt", "  \n")
  train, valid = _all_docs(_data_cfg(tmp_path, str(tmp_path / "corpus" / "*.txt")))
  assert sorted(train + valid) == sorted(texts)  # exact text, newlines kept
  assert valid and train and not set(train) & set(valid)


def test_blank_line_mode_and_recursive_glob(tmp_path):
  _write(tmp_path / "c" / "a.txt", "one\nstill one\n\n\ntwo\n  \nthree\r\n\r\nfour")
  _write(tmp_path / "c" / "sub" / "b.txt", "five\n\nsix\n")
  train, valid = _all_docs(_data_cfg(tmp_path, str(tmp_path / "c" / "**" / "*.txt"),
                                     mode="blank_line"))
  assert sorted(train + valid) == sorted(
      ["one\nstill one", "two", "three", "four", "five", "six"])


def test_jsonl_text_field(tmp_path):
  rows = [{"text": f"record {i} — ok", "id": i} for i in range(6)]
  lines = "\n".join(json.dumps(r) for r in rows) + "\n\n"
  _write(tmp_path / "c" / "x.jsonl", lines)
  train, valid = _all_docs(_data_cfg(tmp_path, str(tmp_path / "c" / "*.jsonl")))
  assert sorted(train + valid) == sorted(r["text"] for r in rows)


def test_validation_split_is_deterministic_and_nonempty():
  for n in (2, 3, 10, 1000):
    held = text_files.eval_indices(n, 0.05)
    assert held == text_files.eval_indices(n, 0.05)
    assert 1 <= len(held) < n
  assert 30 <= len(text_files.eval_indices(1000, 0.05)) <= 70


def test_empty_glob_is_a_config_error(tmp_path):
  with pytest.raises(config.ConfigError, match="data.text_glob is empty"):
    sources.open_text_source(_data_cfg(tmp_path, ""), "train")
  with pytest.raises(config.ConfigError, match="data.text_glob=.*matches no files"):
    sources.open_text_source(_data_cfg(tmp_path, str(tmp_path / "nothing*.txt")), "train")
  _write(tmp_path / "one.txt", "a single document")
  with pytest.raises(config.ConfigError, match="data.text_glob.*at least 2"):
    sources.open_text_source(_data_cfg(tmp_path, str(tmp_path / "one.txt")), "train")
  _write(tmp_path / "bad.jsonl", '{"txt": "no text field"}\n')
  with pytest.raises(config.ConfigError, match="bad.jsonl:1"):
    sources.open_text_source(_data_cfg(tmp_path, str(tmp_path / "bad.jsonl")), "train")
  with pytest.raises(config.ConfigError, match="data.text_mode"):
    sources.open_text_source(_data_cfg(tmp_path, str(tmp_path / "one.txt"), mode="line"),
                             "train")
  assert not (tmp_path / "data").exists()  # nothing was built


def test_changed_files_build_a_new_dataset(tmp_path):
  for i in range(3):
    _write(tmp_path / "c" / f"{i}.txt", f"doc {i}")
  d = _data_cfg(tmp_path, str(tmp_path / "c" / "*.txt"))
  before = sources.dataset_key(d)
  assert before == sources.dataset_key(d)
  train, valid = _all_docs(d)
  assert len(train + valid) == 3
  path = tmp_path / "c" / "0.txt"
  _write(path, "doc 0, edited")
  os.utime(path, ns=(1, 1))  # mtime alone is enough; make sure it changed
  assert sources.dataset_key(d) != before
  train, valid = _all_docs(d)
  assert "doc 0, edited" in train + valid
