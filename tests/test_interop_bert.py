"""BERT from and to Hugging Face: MLM and NSP logit parity with padding, export, bitwise
round trip, a head class without NSP, and the WordPiece vocabulary."""
import os

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as FastTokenizer, models, pre_tokenizers, trainers
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

from experiments import convert
from lm import interop
from lm.data.hf_tokenizer import load_tokenizer
from tests.interop_helpers import (apply_capturing, assert_reimport_is_bitwise, load_workdir, record,
                                   record_hidden, torch_logits)

V, D = 90, 32
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _config(**kw):
  return BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=48, max_position_embeddings=40, attn_implementation="eager", **kw)


def _wordpiece(directory):
  tok = FastTokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(["the cat sat on the mat", "a dog ran in the park"] * 10,
                          trainers.WordPieceTrainer(vocab_size=V, special_tokens=SPECIALS,
                                                    show_progress=False))
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
    f.write('{"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", '
            '"sep_token": "[SEP]", "mask_token": "[MASK]"}')


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  torch.manual_seed(0)
  model = BertForPreTraining(_config()).eval()
  d = str(tmp_path_factory.mktemp("bert") / "hf")
  model.save_pretrained(d)
  _wordpiece(d)
  wd = str(tmp_path_factory.mktemp("bert") / "wd")
  convert.main([f"--from_hf={d}", f"--to={wd}"])
  return model, d, wd


def _batch():
  rng = np.random.default_rng(0)
  ids, types = rng.integers(5, V, (2, 16)), rng.integers(0, 2, (2, 16))
  mask = np.ones_like(ids)
  mask[1, 10:] = 0
  return ids, types, mask


def _hf_out(model):
  ids, types, mask = _batch()
  return torch_logits(model, input_ids=ids, token_type_ids=types, attention_mask=mask)


def test_import_matches_transformers(hf):
  hf_model, _, wd = hf
  _, model, params = load_workdir(wd, scan_layers=False)  # unrolled: each layer's output is seen
  ids, types, mask = _batch()
  out = _hf_out(hf_model)
  (mlm, nsp), found = apply_capturing(model, params, ids, None, mask, types, names=("encoder",))
  m = mask[..., None].astype(bool)
  record("bert", "import mlm logits", mlm, out.prediction_logits.numpy(), np.broadcast_to(m, mlm.shape))
  record("bert", "import nsp logits", nsp[:, 0], out.seq_relationship_logits.numpy())
  # post-norm BERT has no final norm: the last layer's output is the stack's
  record_hidden("bert", "import hidden", found, "encoder", "encoder", out.hidden_states, mask)


def test_export_reloads_in_transformers_and_round_trips_bitwise(hf, tmp_path):
  hf_model, _, wd = hf
  out_hf, wd2 = str(tmp_path / "hf"), str(tmp_path / "wd2")
  convert.main([f"--from_workdir={wd}", f"--to_hf={out_hf}"])
  reloaded = BertForPreTraining.from_pretrained(out_hf, attn_implementation="eager").eval()
  a, b = _hf_out(reloaded), _hf_out(hf_model)
  m = np.broadcast_to(_batch()[2][..., None].astype(bool), a.prediction_logits.shape)
  record("bert", "export mlm logits", a.prediction_logits.numpy(), b.prediction_logits.numpy(), m)
  record("bert", "export nsp logits", a.seq_relationship_logits.numpy(), b.seq_relationship_logits.numpy())
  assert_reimport_is_bitwise(wd, out_hf, wd2)


def test_masked_lm_without_nsp_head(tmp_path):
  """BertForMaskedLM has no pooler or NSP head: those stay zero and are listed."""
  torch.manual_seed(0)
  hf_model = BertForMaskedLM(_config()).eval()
  hf_model.save_pretrained(str(tmp_path / "hf"))
  summary = interop.import_hf(str(tmp_path / "hf"), str(tmp_path / "wd"))
  assert summary["absent"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                               "cls.seq_relationship.bias", "cls.seq_relationship.weight"]
  _, model, params = load_workdir(str(tmp_path / "wd"))
  ids, types, mask = _batch()
  mlm, _ = model.apply({"params": params}, ids, None, mask, types)
  out = torch_logits(hf_model, input_ids=ids, token_type_ids=types, attention_mask=mask)
  record("bert", "masked-lm logits", mlm, out.logits.numpy(),
         np.broadcast_to(mask[..., None].astype(bool), mlm.shape))


def test_wordpiece_vocabulary(hf):
  _, d, wd = hf
  tok = load_tokenizer(wd)
  ref = FastTokenizer.from_file(os.path.join(d, "tokenizer.json"))
  assert tok.encode("the cat ran") == ref.encode("the cat ran", add_special_tokens=False).ids
  assert tok.decode(tok.encode("the cat ran")) == "the cat ran"
  assert tok.pad_id == 0 and tok.special_id("[MASK]") == 4
