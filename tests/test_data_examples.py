"""Per-objective loaders: sentence splitting, whole-example packing on one or two sides,
exact resume, per-process sharding, fixed eval batches, and build_data for every objective."""
import numpy as np
import pytest

from lm.config import ConfigError, base_config
from lm.data import preprocessing, build_data, decoder_seq_len, examples
from lm.data.tokenizer import NUM_RESERVED
from lm.objectives import get_objective
from tests.helpers import tiny_config

OBJECTIVES = {"prefix_lm": "decoder", "mlm": "encoder", "mlm_nsp": "encoder",
              "span_corruption": "encoder_decoder", "seq2seq": "encoder_decoder"}


class CharTokenizer:
  """One id per character; enough of the Tokenizer interface for preprocessing."""
  pad_id, eos_id, bos_id, unk_id = 0, 1, 2, 3
  vocab_size = NUM_RESERVED + 64
  _specials = {"<mask>": 4, "<sep>": 5, "<cls>": 6, **{f"<extra_id_{i}>": 12 + i for i in range(16)}}

  def encode(self, text):
    return [NUM_RESERVED + ord(c) % 64 for c in text]

  def special_id(self, name):
    return self._specials[name]


def _docs(n, seed=0):
  rng = np.random.default_rng(seed)
  words = ["ab", "cde", "fg", "hij", "kl", "mno", "pq"]
  return [" ".join(" ".join(rng.choice(words, size=int(rng.integers(2, 6)))) + "."
                   for _ in range(int(rng.integers(1, 5)))) for _ in range(n)]


def _cfg(objective, seq_len=32):
  c = base_config()
  c.objective = objective
  c.model.family = OBJECTIVES[objective]
  c.data.seq_len = seq_len
  return c


def _loader(objective, docs, seed=0, index=0, count=1, repeat=True, batch_size=4):
  tok = CharTokenizer()
  tokenize, make, packer = preprocessing(_cfg(objective), tok, batch_size)
  return examples.ExampleLoader(docs, tok, tokenize, make, packer, objective,
                                seed if repeat else None, index, count, repeat=repeat,
                                example_seed=7)


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------- pieces

@pytest.mark.parametrize("text", ["One. Two! Three? Four", "a b. c d.", "no end", "x.\n\ny. ",
                                  "Quote.\" Next (x.) y", ""])
def test_split_sentences_keeps_every_character(text):
  parts = examples.split_sentences(text)
  assert "".join(parts) == text and all(parts)


def test_split_sentences_on_the_synthetic_format():
  assert examples.split_sentences("ab cd. ef. gh ij.") == ["ab cd. ", "ef. ", "gh ij."]


def test_row_packer_two_sides():
  fields = {"enc": ("encoder_", np.int32), "dec": ("decoder_", np.int32)}
  p = examples.RowPacker(2, {"encoder_": 6, "decoder_": 3}, fields)
  ex = lambda e, d: {"enc": np.arange(1, e + 1), "dec": np.arange(1, d + 1)}
  assert p.add(ex(2, 1)) and p.add(ex(3, 2))  # row 0: both fit
  assert p.add(ex(1, 1))  # decoder side is full: a new row even though the encoder has room
  assert p.add(ex(4, 1))
  assert not p.add(ex(2, 2))  # no room left anywhere
  b = p.batch
  np.testing.assert_array_equal(b["encoder_segment_ids"], [[1, 1, 2, 2, 2, 0], [1, 2, 2, 2, 2, 0]])
  np.testing.assert_array_equal(b["decoder_segment_ids"], [[1, 2, 2], [1, 2, 0]])
  np.testing.assert_array_equal(b["encoder_positions"], [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 0]])
  np.testing.assert_array_equal(b["dec"], [[1, 1, 2], [1, 1, 0]])
  with pytest.raises(ValueError, match="length"):
    examples.RowPacker(1, {"encoder_": 6, "decoder_": 3}, fields).add(ex(7, 1))


# ---------------------------------------------------------------- loaders

@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_resume_is_exact_across_epochs(objective):
  docs = _docs(30)
  a = _loader(objective, docs)
  for _ in range(6):
    next(a)
  state = a.get_state()
  want = [next(a) for _ in range(12)]
  assert a.epoch >= 1  # the comparison crosses an epoch boundary
  b = _loader(objective, docs)
  b.set_state(dict(state))
  for x, y in zip(want, (next(b) for _ in range(12))):
    _equal(x, y)
  # a fresh loader with the same seed gives the same batches; another seed does not
  c, d = _loader(objective, docs), _loader(objective, docs, seed=1)
  first = next(c)
  _equal(first, next(_loader(objective, docs)))
  assert any(not np.array_equal(first[k], v) for k, v in next(d).items())


def test_state_of_another_objective_or_shard_is_refused():
  docs = _docs(20)
  state = _loader("mlm", docs).get_state()
  with pytest.raises(ValueError, match="kind"):
    _loader("mlm_nsp", docs).set_state(state)
  with pytest.raises(ValueError, match="process_count"):
    _loader("mlm", docs, count=2).set_state(state)


def test_processes_read_disjoint_documents():
  docs = [str(i) for i in range(20)]
  packer = lambda: examples.RowPacker(5, {"": 1}, {"inputs": ("", np.int32)})
  make = lambda text, rng, other: [{"inputs": np.array([int(text)])}]
  seen = []
  for index in range(2):
    loader = examples.ExampleLoader(docs, None, lambda tok, t: t, make, packer, "ids", 3, index, 2)
    seen.append(np.concatenate([next(loader)["inputs"].ravel() for _ in range(2)]))
  assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(20))


def test_fixed_eval_batches_are_stable_and_padded():
  docs = _docs(6)
  make_batches = lambda: examples.fixed_batches(_loader("mlm_nsp", docs, repeat=False), 5)
  a, b = make_batches(), make_batches()
  for x, y in zip(a, b):
    _equal(x, y)
  assert a[-1]["segment_ids"].max() == 0  # the documents ran out: all-padding batches follow
  assert a[0]["nsp_weights"].sum() > 0
  empty = examples.fixed_batches(_loader("mlm", docs, index=6, count=7, repeat=False), 2)
  assert all(x["weights"].sum() == 0 for x in empty)  # a process with no documents


# ---------------------------------------------------------------- build_data

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_build_data_gives_the_objectives_batch_keys(data_dir, objective):
  cfg = tiny_config(data_dir, **{"objective": objective, "model.family": OBJECTIVES[objective],
                                 "data.synthetic.topics": 2})
  data = build_data(cfg)
  batch = next(data.train)
  assert set(batch) == set(get_objective(objective).batch_keys)
  target_len = decoder_seq_len(cfg)
  for k, v in batch.items():
    length = target_len if k.startswith("decoder_") else cfg.data.seq_len
    assert v.shape == (cfg.train.batch_size, length), k
    assert v.dtype == (np.float32 if k.endswith("weights") else np.int32), k
  assert len(data.eval_batches) == cfg.train.eval_batches
  seg = batch["encoder_segment_ids" if "encoder_segment_ids" in batch else "segment_ids"]
  assert (seg > 0).mean() > 0.6  # rows are mostly filled
  if objective == "span_corruption":
    assert 4 <= target_len < cfg.data.seq_len
  assert "entropy_floor_bpb" in data.metadata


def test_build_data_refuses_a_mismatched_family(data_dir):
  cfg = tiny_config(data_dir, **{"objective": "mlm_nsp", "model.family": "decoder"})
  with pytest.raises(ConfigError, match="model.family='encoder'"):
    build_data(cfg)
  cfg = tiny_config(data_dir, **{"objective": "span_corruption", "model.family": "encoder_decoder",
                                 "data.noise_density": 1.5})
  with pytest.raises(ConfigError, match="data.noise_density"):
    build_data(cfg)
