"""The synthetic corpus: its entropy floor formula, determinism, and the tfds build."""
import collections

import pytest
import tensorflow_datasets as tfds

from lm import config
from lm.data import sources, synthetic

DEFAULT = (0, 48, 4, 0.25)  # seed, num_words, branching, end_prob of lm/config.py


def _empirical_bpb(args, num_docs, split="train"):
  chain = synthetic.markov_chain(*args)
  docs = list(synthetic.generate_documents(*args, num_docs, split))
  bits = -sum(chain.log2_prob(d) for d in docs)
  return bits / sum(len(d.encode()) for d in docs)


@pytest.mark.parametrize("args", [DEFAULT, (3, 200, 8, 0.1), (5, 6, 1, 1.0)])
def test_floor_matches_empirical_entropy(args):
  floor = synthetic.entropy_floor_bpb(*args)
  assert 0.0 < floor < 8.0
  assert _empirical_bpb(args, 3000) == pytest.approx(floor, rel=0.02)


def test_default_floor_value():
  # Pinned so a change to the generator (which would change every run's
  # reference line) is noticed.
  assert synthetic.entropy_floor_bpb(*DEFAULT) == pytest.approx(0.497112, abs=1e-6)


def test_documents_are_deterministic_and_splits_differ():
  a = list(synthetic.generate_documents(*DEFAULT, 20, "train"))
  assert a == list(synthetic.generate_documents(*DEFAULT, 20, "train"))
  assert a != list(synthetic.generate_documents(*DEFAULT, 20, "validation"))
  assert a != list(synthetic.generate_documents(1, 48, 4, 0.25, 20, "train"))


def test_rendering_is_ascii_sentences():
  chain = synthetic.markov_chain(*DEFAULT)
  assert len(set(chain.words)) == 48
  assert all(2 <= len(w) <= 7 and w.isalpha() and w.islower() for w in chain.words)
  for doc in synthetic.generate_documents(*DEFAULT, 50):
    assert doc.isascii() and doc.endswith(".") and "  " not in doc
    assert not doc.startswith(" ")


def test_sentence_length_and_chain_shape():
  chain = synthetic.markov_chain(*DEFAULT)
  assert chain.trans.sum(axis=1) == pytest.approx(1.0)
  words = (chain.trans[:48, :48] > 0).sum(axis=1)
  assert (words == 4).all()  # `branching` word successors (+ EOS)
  sentences = [s for d in synthetic.generate_documents(*DEFAULT, 300) for s in d.split(". ")]
  mean_words = sum(len(s.split(" ")) for s in sentences) / len(sentences)
  assert 5.0 <= mean_words <= 8.0


def _data_cfg(tmp_path, **synthetic_overrides):
  cfg = config.base_config()
  cfg.data.data_dir = str(tmp_path)
  cfg.data.synthetic.train_docs = 300
  cfg.data.synthetic.eval_docs = 40
  for k, v in synthetic_overrides.items():
    cfg.data.synthetic[k] = v
  return cfg.data


def test_built_dataset_holds_documents_and_floor(tmp_path):
  d = _data_cfg(tmp_path)
  train, meta = sources.open_text_source(d, "train")
  valid, _ = sources.open_text_source(d, "validation")
  floor = synthetic.entropy_floor_bpb(*DEFAULT)
  docs = list(synthetic.generate_documents(*DEFAULT, 40, "validation"))
  eval_floor = sum(-synthetic.log2_prob(*DEFAULT, 1, t) for t in docs) / sum(len(t) for t in docs)
  # The source's own score on the 40 held-out documents: near the floor, not on it.
  assert meta == {"entropy_floor_bpb": pytest.approx(floor), "eval_floor_bpb": pytest.approx(eval_floor)}
  assert 0.9 * floor < eval_floor < 1.1 * floor and eval_floor != pytest.approx(floor, rel=1e-4)
  # tfds stores examples in its own (shuffled) order: compare as multisets.
  assert collections.Counter(train[i] for i in range(len(train))) == collections.Counter(
      synthetic.generate_documents(*DEFAULT, 300, "train"))
  assert len(valid) == 40 and isinstance(valid[0], str)
  # The floor is in the dataset's own metadata files, readable without our code.
  path = tfds.builder(f"synthetic_corpus/{sources.synthetic_config(d).name}",
                      data_dir=str(tmp_path)).data_dir
  info = tfds.builder_from_directory(path).info
  assert info.metadata["entropy_floor_bpb"] == pytest.approx(floor)
  assert info.file_format.value == "array_record"


def test_settings_cache_separately(tmp_path):
  a = sources.synthetic_config(_data_cfg(tmp_path)).name
  b = sources.synthetic_config(_data_cfg(tmp_path, end_prob=0.5)).name
  c = sources.synthetic_config(_data_cfg(tmp_path, seed=1)).name
  assert len({a, b, c}) == 3
  _, meta_b = sources.open_text_source(_data_cfg(tmp_path, end_prob=0.5), "train")
  assert meta_b["entropy_floor_bpb"] == pytest.approx(
      synthetic.entropy_floor_bpb(0, 48, 4, 0.5))
  built = [p.name for p in (tmp_path / "synthetic_corpus").iterdir() if p.name[0] != "."]
  assert built == [b]


def test_bad_settings_are_config_errors(tmp_path):
  with pytest.raises(config.ConfigError, match="data.synthetic.end_prob"):
    sources.open_text_source(_data_cfg(tmp_path, end_prob=0.0), "train")
  with pytest.raises(config.ConfigError, match="data.synthetic.branching"):
    sources.open_text_source(_data_cfg(tmp_path, branching=60), "train")
  d = _data_cfg(tmp_path)
  d.eval_split = "test"
  with pytest.raises(config.ConfigError, match="data.eval_split.*'train', 'validation'"):
    sources.open_text_source(d, "test")
  assert not (tmp_path / "synthetic_corpus").exists()  # nothing built


def test_losing_a_build_race_uses_the_winners_data(tmp_path, monkeypatch):
  d = _data_cfg(tmp_path)
  real_prepare = synthetic.SyntheticCorpus.download_and_prepare

  def lose_race(self, **kwargs):
    # Another process finishes the same build first; our final rename fails.
    winner = synthetic.SyntheticCorpus(config=self.builder_config, data_dir=str(tmp_path),
                                       file_format="array_record")
    real_prepare(winner, **kwargs)
    raise FileExistsError("incomplete.xyz -> 1.0.0")

  monkeypatch.setattr(synthetic.SyntheticCorpus, "download_and_prepare", lose_race)
  train, meta = sources.open_text_source(d, "train")
  assert len(train) == 300 and meta["entropy_floor_bpb"] > 0


def test_another_process_finishing_the_build_after_we_looked_uses_its_data(tmp_path, monkeypatch):
  """Our builder was made before the data existed (so it holds no splits), and another process
  finished the build before we checked for it: we must read the data it wrote."""
  from lm.data import tfds_util

  d = _data_cfg(tmp_path)
  real_make = tfds_util._make_builder
  calls = []

  def make_then_other_process_builds(builder_cls, config, data_dir):
    builder = real_make(builder_cls, config, data_dir)
    if not calls:  # the other process: builds right after our first builder was made
      real_make(builder_cls, config, data_dir).download_and_prepare(file_format="array_record")
    calls.append(builder)
    return builder

  monkeypatch.setattr(tfds_util, "_make_builder", make_then_other_process_builds)
  train, meta = sources.open_text_source(d, "train")
  assert len(train) == 300 and meta["entropy_floor_bpb"] > 0
