"""Registered tfds datasets by name: read offline via tfds.testing.mock_data, and errors.

mock_data (no metadata files ship with tfds) uses MockPolicy.USE_CODE: the
builder's features come from its code, any split name is accepted, the data
dir is replaced, and data_source returns random strings.
"""
import pytest
import tensorflow_datasets as tfds

from lm import config
from lm.data import sources


def _data_cfg(tmp_path, dataset, text_field="text"):
  cfg = config.base_config()
  cfg.data.dataset = dataset
  cfg.data.data_dir = str(tmp_path)
  cfg.data.text_field = text_field
  return cfg.data


@pytest.mark.parametrize("name", ["lm1b", "c4/en"])
def test_registered_dataset_by_name(tmp_path, name):
  d = _data_cfg(tmp_path, name)
  with tfds.testing.mock_data(num_examples=9):
    train, meta = sources.open_text_source(d, "train")
    docs = [train[i] for i in range(len(train))]
    assert train.__getitems__([0, 3]) == [docs[0], docs[3]]
  assert meta == {} and len(docs) == 9
  assert all(isinstance(t, str) and t for t in docs)
  assert len(set(docs)) > 1


def test_missing_dataset_names_data_dir_and_fix(tmp_path):
  with pytest.raises(config.ConfigError, match="data.data_dir.*tfds build lm1b"):
    sources.open_text_source(_data_cfg(tmp_path, "lm1b"), "train")


def test_unknown_name_and_field(tmp_path):
  with pytest.raises(config.ConfigError, match="data.dataset='lm1bx'.*lm1b"):
    sources.open_text_source(_data_cfg(tmp_path, "lm1bx"), "train")
  with pytest.raises(config.ConfigError, match="data.text_field='content'.*'text'"):
    sources.open_text_source(_data_cfg(tmp_path, "lm1b", text_field="content"), "train")


def test_prepared_dataset_by_name_and_unknown_split(tmp_path):
  # A prepared array_record dataset on disk, opened through the generic path
  # (the synthetic builder is registered once lm.data is imported).
  d = _data_cfg(tmp_path, "synthetic")
  d.synthetic.train_docs, d.synthetic.eval_docs = 30, 5
  local, _ = sources.open_text_source(d, "validation")
  d.dataset = f"synthetic_corpus/{sources.synthetic_config(d).name}"
  by_name, meta = sources.open_text_source(d, "validation")
  assert meta == {} and [by_name[i] for i in range(5)] == [local[i] for i in range(5)]
  d.eval_split = "test"
  with pytest.raises(config.ConfigError, match=r"data.eval_split='test'.*\['train', "
                     r"'validation'\]"):
    sources.open_text_source(d, "test")
