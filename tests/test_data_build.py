"""build_data: the bundle the training loop gets, and the config errors it raises first."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lm import config
from lm.data import DataBundle, build_data, synthetic


def _cfg(tmp_path):
  cfg = config.base_config()
  cfg.data.data_dir = str(tmp_path / "data")
  cfg.data.seq_len = 32
  cfg.data.synthetic.train_docs = 300
  cfg.data.synthetic.eval_docs = 40
  cfg.data.tokenizer_docs = 200
  cfg.model.vocab_size = 320
  cfg.train.batch_size = 4
  cfg.train.eval_batches = 3
  return cfg


def test_build_synthetic_bundle(tmp_path):
  cfg = _cfg(tmp_path)
  bundle = build_data(cfg, process_index=1, process_count=2)
  assert isinstance(bundle, DataBundle)
  assert bundle.metadata == {"entropy_floor_bpb": pytest.approx(
      synthetic.entropy_floor_bpb(0, 48, 4, 0.25)), "eval_floor_bpb": pytest.approx(
      bundle.metadata["eval_floor_bpb"])}
  assert abs(bundle.metadata["eval_floor_bpb"] / bundle.metadata["entropy_floor_bpb"] - 1) < 0.1
  assert bundle.tokenizer.vocab_size <= cfg.model.vocab_size
  assert bundle.tokenizer.model_path.startswith(os.path.join(cfg.data.data_dir, "tokenizers"))
  batch = next(bundle.train)
  assert {k: v.shape for k, v in batch.items()} == {
      k: (2, 32) for k in ("inputs", "targets", "segment_ids", "positions", "weights")}
  assert len(bundle.eval_batches) == 3
  assert all(b["inputs"].shape == (2, 32) for b in bundle.eval_batches)
  assert bundle.eval_batches[0]["weights"].all()
  # Text bytes behind the targets, as a trainer computes bits per byte.
  token_bytes = bundle.tokenizer.token_bytes()
  assert (token_bytes[batch["targets"]] * batch["weights"]).sum() > 32

  # A second build reuses data and tokenizer and gives the same batches; the
  # state moves a loader of the array_record data to the same spot.
  state = bundle.train.get_state()
  expected = next(bundle.train)
  again = build_data(cfg, process_index=1, process_count=2)
  assert again.tokenizer.model_path == bundle.tokenizer.model_path
  np.testing.assert_array_equal(next(again.train)["inputs"], batch["inputs"])
  again.train.set_state(state)
  for k, v in next(again.train).items():
    np.testing.assert_array_equal(v, expected[k])
  for a, b in zip(again.eval_batches, bundle.eval_batches):
    np.testing.assert_array_equal(a["targets"], b["targets"])


def test_build_from_text_files(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(12):
    (corpus / f"{i}.txt").write_text(f"Document {i}: some text, ünïcode and more text.\n")
  cfg = _cfg(tmp_path)
  cfg.data.dataset = "text"
  cfg.data.text_glob = str(corpus / "*.txt")
  cfg.data.eval_fraction = 0.2
  bundle = build_data(cfg)
  assert bundle.metadata == {}
  assert next(bundle.train)["weights"].all()
  assert "text_" in os.path.basename(bundle.tokenizer.model_path)


@pytest.mark.parametrize("field,value,count,match", [
    ("train.batch_size", 6, 4, "train.batch_size=6.*process count 4"),
    ("data.seq_len", 1, 1, "data.seq_len=1"),
    ("model.vocab_size", 200, 1, "model.vocab_size=200.*285.*reserves 28.*256 byte"),
    ("data.dataset", "no_such_dataset", 1, "data.dataset='no_such_dataset'"),
    ("data.dataset", "text", 1, "data.text_glob is empty"),
    ("data.eval_split", "test", 1, "data.eval_split='test'"),
])
def test_config_errors_come_before_any_work(tmp_path, field, value, count, match):
  cfg = _cfg(tmp_path)
  section, name = field.split(".")
  cfg[section][name] = value
  with pytest.raises(config.ConfigError, match=match):
    build_data(cfg, process_count=count)
  data_dir = tmp_path / "data"
  assert not data_dir.exists() or not any(
      p.name in ("synthetic_corpus", "text_files", "tokenizers") for p in data_dir.iterdir())


def test_build_registered_dataset_offline(tmp_path):
  cfg = _cfg(tmp_path)
  cfg.data.dataset = "lm1b"
  with tfds.testing.mock_data(num_examples=30):
    bundle = build_data(cfg)
  assert bundle.metadata == {}
  assert next(bundle.train)["weights"].all()
  assert os.path.basename(bundle.tokenizer.model_path).startswith("lm1b_train_v320_n200")
