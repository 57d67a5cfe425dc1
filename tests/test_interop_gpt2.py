"""GPT-2 from and to Hugging Face: logit parity, export, bitwise round trip, greedy decoding,
sharded loading and the tokenizer (a byte-level BPE trained here)."""
import functools
import os

import jax
import ml_collections
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as FastTokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

from experiments import convert
from lm import decode, sharding
from lm.data.hf_tokenizer import HFTokenizer
from tests.interop_helpers import (apply_capturing, assert_reimport_is_bitwise, load_workdir, record,
                                   record_hidden, torch_logits)

V, D = 272, 32
TEXT = ["the cat sat on the mat", "a dog ran in the park", "the cat and the dog"] * 5


def _tokenizer(path):
  tok = FastTokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TEXT, trainers.BpeTrainer(
      vocab_size=V, special_tokens=["<|endoftext|>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(path)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  torch.manual_seed(0)
  cfg = GPT2Config(vocab_size=V, n_embd=D, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                   eos_token_id=0, attn_implementation="eager")
  model = GPT2LMHeadModel(cfg).eval()
  d = str(tmp_path_factory.mktemp("gpt2") / "hf")
  model.save_pretrained(d)
  _tokenizer(os.path.join(d, "tokenizer.json"))
  wd = str(tmp_path_factory.mktemp("gpt2") / "wd")
  convert.main([f"--from_hf={d}", f"--to={wd}"])
  return model, d, wd


def _batch():
  ids = np.random.default_rng(0).integers(1, V, (3, 12))
  mask = np.ones_like(ids)
  mask[1, 8:] = 0  # right padding
  mask[2, :5] = 0  # left padding
  return ids, mask, np.maximum(mask.cumsum(-1) - 1, 0)


def _compare(model, params, hf_model, tag):
  ids, mask, pos = _batch()
  out = torch_logits(hf_model, input_ids=ids, attention_mask=mask, position_ids=pos)
  logits, found = apply_capturing(model, params, ids, pos, mask, names=("final_norm",))
  m = mask[..., None].astype(bool)
  record("gpt2", f"{tag} logits", logits, out.logits.numpy(), np.broadcast_to(m, logits.shape))
  record_hidden("gpt2", f"{tag} hidden", found, "decoder", "final_norm", out.hidden_states, mask)
  return out.logits.numpy()


def test_import_matches_transformers(hf):
  hf_model, _, wd = hf
  _, model, params = load_workdir(wd, scan_layers=False)  # unrolled: each layer's output is seen
  _compare(model, params, hf_model, "import")


def test_export_reloads_in_transformers_and_round_trips_bitwise(hf, tmp_path):
  hf_model, _, wd = hf
  out_hf, wd2 = str(tmp_path / "hf"), str(tmp_path / "wd2")
  convert.main([f"--from_workdir={wd}", "--step=0", f"--to_hf={out_hf}"])
  assert os.path.exists(os.path.join(out_hf, "tokenizer.json"))
  reloaded = GPT2LMHeadModel.from_pretrained(out_hf, attn_implementation="eager").eval()
  ids, mask, pos = _batch()
  a = torch_logits(reloaded, input_ids=ids, attention_mask=mask, position_ids=pos).logits.numpy()
  b = torch_logits(hf_model, input_ids=ids, attention_mask=mask, position_ids=pos).logits.numpy()
  record("gpt2", "export logits", a, b, np.broadcast_to(mask[..., None].astype(bool), a.shape))
  assert_reimport_is_bitwise(wd, out_hf, wd2)


def test_greedy_generation_matches_transformers(hf):
  hf_model, _, wd = hf
  dec = decode.Decoder.from_workdir(wd)
  prompts = [[5, 9, 3, 17], [8, 2, 44, 61, 7, 12, 30]]
  ours = dec.generate(prompts, max_new_tokens=10, stop_ids=(0,))
  for p, o in zip(prompts, ours):
    with torch.no_grad():
      g = hf_model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                            do_sample=False, max_new_tokens=10, pad_token_id=0)
    theirs = g[0, len(p):].tolist()
    theirs = theirs[:theirs.index(0)] if 0 in theirs else theirs
    assert o == theirs


def test_loads_sharded_onto_a_mesh(hf):
  hf_model, _, wd = hf
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}), jax.devices())
  _, model, params = load_workdir(wd, mesh=mesh)
  table = params["token_embed"]["embedding"]
  assert not table.sharding.is_fully_replicated  # placed by the logical rules, not copied whole
  assert len(table.addressable_shards) == 8
  _compare(model, params, hf_model, "sharded")


def test_tokenizer_is_the_hf_one(hf):
  _, d, wd = hf
  dec = decode.Decoder.from_workdir(wd)
  assert isinstance(dec.tokenizer, HFTokenizer)
  ref = FastTokenizer.from_file(os.path.join(d, "tokenizer.json"))
  text = "the cat ran on the mat"
  assert dec.tokenizer.encode(text) == ref.encode(text).ids
  assert dec.tokenizer.decode(dec.tokenizer.encode(text)) == text
  assert dec.tokenizer.eos_id == 0 and dec.tokenizer.vocab_size == V


@pytest.mark.slow
def test_training_starts_from_the_import(hf, tmp_path):
  """experiments/configs/from_hf.py: init_from the import, its tokenizer in the data pipeline."""
  from experiments.configs.from_hf import get_config
  from lm.train import train
  _, _, wd = hf
  c = get_config(wd)
  for dotted, value in {"data.data_dir": str(tmp_path / "data"), "data.seq_len": 32,
                        "data.synthetic.train_docs": 200, "data.synthetic.eval_docs": 20,
                        "train.batch_size": 8, "train.num_steps": 1, "train.warmup_steps": 10,
                        "train.eval_batches": 1}.items():
    *parents, leaf = dotted.split(".")
    functools.reduce(lambda node, k: node[k], parents, c)[leaf] = value
  tuned = str(tmp_path / "tuned")
  train(c, tuned, devices=jax.devices()[:1])  # lr is 0 at step 0: the params stay the import's
  assert isinstance(decode.Decoder.from_workdir(tuned).tokenizer, HFTokenizer)
  _, _, a = load_workdir(wd)
  _, _, b = load_workdir(tuned)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_agent_names_the_missing_chat_tokens(hf):
  from agent.lm_backend import JaxBackend
  with pytest.raises(ValueError, match="lacks the chat tokens"):
    JaxBackend.from_workdir(hf[2])
