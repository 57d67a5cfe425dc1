"""Conversion errors name what is unsupported, missing or mismatched, before anything is written."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from experiments import convert
from lm.config import ModelConfig
from lm.interop import gpt2, t5
from lm.interop.common import UnsupportedError


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  torch.manual_seed(0)
  d = str(tmp_path_factory.mktemp("err") / "hf")
  GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16,
                                   bos_token_id=0, eos_token_id=0)).save_pretrained(d)
  return d


def _variant(src, dst, config=None, tensors=None):
  shutil.copytree(src, dst)
  if config:
    with open(os.path.join(dst, "config.json")) as f:
      c = json.load(f)
    c.update(config)
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(c, f)
  if tensors:
    path = os.path.join(dst, "model.safetensors")
    save_file(tensors(load_file(path)), path, metadata={"format": "pt"})
  return dst


def _fails(argv, *needles):
  with pytest.raises(SystemExit) as e:
    convert.main(argv)
  for n in needles:
    assert n in str(e.value), str(e.value)


def test_unsupported_architecture_and_fields(hf_dir, tmp_path):
  llama = _variant(hf_dir, str(tmp_path / "llama"), {"model_type": "llama",
                                                     "architectures": ["LlamaForCausalLM"]})
  _fails([f"--from_hf={llama}", f"--to={tmp_path / 'a'}"], "model_type='llama'", "supported model types")
  odd = _variant(hf_dir, str(tmp_path / "odd"), {"scale_attn_by_inverse_layer_idx": True})
  _fails([f"--from_hf={odd}", f"--to={tmp_path / 'b'}"], "scale_attn_by_inverse_layer_idx=True")
  with pytest.raises(UnsupportedError, match="feed_forward_proj='gated-foo'"):
    t5.config_from_hf({"d_model": 8, "num_heads": 2, "d_kv": 4, "num_layers": 1, "vocab_size": 10,
                       "d_ff": 8, "feed_forward_proj": "gated-foo"}, set())
  with pytest.raises(UnsupportedError, match=r"model.position='rope' \(needs 'learned'\)"):
    gpt2.config_to_hf(ModelConfig(), {})  # this project's default decoder is not GPT-2
  assert not any(os.path.exists(tmp_path / n) for n in "ab")


def test_missing_and_mismatched_tensors_are_listed(hf_dir, tmp_path):
  def damage(t):
    del t["transformer.h.0.ln_1.weight"]
    t["transformer.wpe.weight"] = np.zeros((8, 16), np.float32)
    t["transformer.h.0.extra.weight"] = np.zeros((3,), np.float32)
    return t
  bad = _variant(hf_dir, str(tmp_path / "bad"), tensors=damage)
  _fails([f"--from_hf={bad}", f"--to={tmp_path / 'wd'}"],
         "missing tensors", "transformer.h.0.ln_1.weight [16]",
         "transformer.wpe.weight [8, 16] [16, 16]", "unexpected", "transformer.h.0.extra.weight [3]")
  assert not os.path.exists(tmp_path / "wd")


def test_refuses_a_non_empty_destination(hf_dir, tmp_path):
  (tmp_path / "wd").mkdir()
  (tmp_path / "wd" / "keep.txt").write_text("mine")
  _fails([f"--from_hf={hf_dir}", f"--to={tmp_path / 'wd'}"], "not empty")
  assert os.listdir(tmp_path / "wd") == ["keep.txt"]
  with pytest.raises(SystemExit):
    convert.main([f"--from_hf={hf_dir}", f"--to_hf={tmp_path / 'x'}"])  # mixed directions
