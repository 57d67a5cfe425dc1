"""The tokenizer: fixed ids, control tokens, exact round trip and byte accounting."""
import os

import numpy as np
import pytest

from lm import config
from lm.data import synthetic, tokenizer as tok_lib

SAMPLES = [
    "the cat sat on the mat.",
    "  leading, trailing  and  double spaces  ",
    "tabs\tand\nnew lines\n\n",
    "héllo wörld — naïve café",
    "日本語のテキスト and emoji 🙂👍🏽",
    "<mask> <|user|> <extra_id_3> are plain text here",
    "",
]
CORPUS = SAMPLES[:4] * 20 + list(synthetic.generate_documents(0, 48, 4, 0.25, 200))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return tok_lib.train_tokenizer(CORPUS, 400, str(tmp_path_factory.mktemp("tok") / "t.model"))


def test_special_ids_are_fixed(tok):
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
  assert tok.special_id("<mask>") == 4
  assert tok.special_id("<|end|>") == 11
  assert [tok.special_id(f"<extra_id_{i}>") for i in range(16)] == list(range(12, 28))
  assert tok.special_id("</s>") == 1
  with pytest.raises(KeyError):
    tok.special_id("<nope>")
  assert tok.vocab_size == 400


def test_control_tokens_never_come_from_text(tok):
  ids = tok.encode(SAMPLES[5])
  assert not set(ids) & set(range(tok_lib.NUM_RESERVED))


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_and_byte_accounting(tok, text):
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == text
  token_bytes = tok.token_bytes()
  assert token_bytes.dtype == np.int32 and token_bytes.shape == (tok.vocab_size,)
  assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_token_bytes_of_special_and_byte_pieces(tok):
  tb = tok.token_bytes()
  assert (tb[:tok_lib.NUM_RESERVED] == 0).all()
  assert (tb[tok_lib.NUM_RESERVED:tok_lib.NUM_RESERVED + 256] == 1).all()
  assert (tb[tok_lib.NUM_RESERVED + 256:] >= 1).all()


def test_training_is_deterministic_and_load_matches(tok, tmp_path):
  again = tok_lib.train_tokenizer(CORPUS, 400, str(tmp_path / "again.model"))
  with open(tok.model_path, "rb") as a, open(again.model_path, "rb") as b:
    assert a.read() == b.read()
  loaded = tok_lib.Tokenizer.load(tok.model_path)
  assert loaded.encode(SAMPLES[3]) == tok.encode(SAMPLES[3])
  assert loaded.model_path == tok.model_path
  assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_many_characters_fit_a_small_vocab(tmp_path):
  # 400 distinct CJK characters do not fit in 300 ids: the rare ones fall back to bytes.
  texts = ["".join(chr(0x4E00 + i) for i in range(j, j + 20)) for j in range(0, 400, 20)]
  small = tok_lib.train_tokenizer(texts, 300, str(tmp_path / "cjk.model"))
  assert small.vocab_size <= 300
  for t in texts:
    assert small.decode(small.encode(t)) == t
    assert small.token_bytes()[small.encode(t)].sum() == len(t.encode())


def test_vocab_too_small_is_a_config_error(tmp_path):
  with pytest.raises(config.ConfigError, match="model.vocab_size=284.*reserved.*byte"):
    tok_lib.train_tokenizer(CORPUS, 284, str(tmp_path / "x.model"))


def test_cached_beside_the_data(tmp_path):
  cfg = config.base_config()
  cfg.data.data_dir = str(tmp_path)
  cfg.data.tokenizer_docs = 50
  docs = CORPUS
  first = tok_lib.get_or_train_tokenizer(cfg.data, 320, docs)
  name = os.path.basename(first.model_path)
  assert os.path.dirname(first.model_path) == str(tmp_path / "tokenizers")
  assert name.startswith("synthetic_s0-w48-b4-e0.25-tr20000-ev500_train_v320_n50")
  mtime = os.stat(first.model_path).st_mtime_ns
  second = tok_lib.get_or_train_tokenizer(cfg.data, 320, ["other text"] * 5)
  assert second.model_path == first.model_path
  assert os.stat(first.model_path).st_mtime_ns == mtime  # reused, not retrained
