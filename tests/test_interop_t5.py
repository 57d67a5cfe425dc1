"""T5 v1.0 and v1.1 from and to Hugging Face: logit parity with padding, export, bitwise
round trip, greedy decoding, and T5's SentencePiece vocabulary."""
import io
import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5ForConditionalGeneration

from experiments import convert
from lm import decode
from lm.data.hf_tokenizer import HFTokenizer
from tests.interop_helpers import (apply_capturing, assert_reimport_is_bitwise, load_workdir, record,
                                   record_hidden, torch_logits)

V, D = 96, 32
VARIANTS = {
    # v1.0: ReLU, tied output scaled by d_model**-0.5
    "v1.0": dict(feed_forward_proj="relu"),
    # v1.1: gated tanh-GELU, separate lm_head, no output scaling; one more decoder layer
    "v1.1": dict(feed_forward_proj="gated-gelu", num_decoder_layers=3),
}


def _spiece(path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(["the cat sat on the mat", "a dog ran in the park"] * 20),
      model_writer=model, vocab_size=20, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1, minloglevel=2, num_threads=1)
  with open(path, "wb") as f:
    f.write(model.getvalue())


def _untie(d):
  """Rewrite a saved T5 as a classic v1.1 file: its own lm_head, tie_word_embeddings=false."""
  torch.manual_seed(1)
  sd = load_file(os.path.join(d, "model.safetensors"))
  sd["lm_head.weight"] = torch.randn(V, D)
  save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(d, "config.json")) as f:
    cfg = json.load(f)
  cfg.pop("scale_decoder_outputs", None)
  cfg["tie_word_embeddings"] = False
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(cfg, f)
  return T5ForConditionalGeneration.from_pretrained(d, attn_implementation="eager").eval()


@pytest.fixture(scope="module", params=list(VARIANTS))
def hf(request, tmp_path_factory):
  torch.manual_seed(0)
  cfg = T5Config(vocab_size=V, d_model=D, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0,
                 attn_implementation="eager", **VARIANTS[request.param])
  model = T5ForConditionalGeneration(cfg).eval()
  d = str(tmp_path_factory.mktemp("t5") / "hf")
  model.save_pretrained(d)
  if request.param == "v1.1":
    model = _untie(d)
  _spiece(os.path.join(d, "spiece.model"))
  wd = str(tmp_path_factory.mktemp("t5") / "wd")
  convert.main([f"--from_hf={d}", f"--to={wd}"])
  return request.param, model, d, wd


def _batch():
  rng = np.random.default_rng(0)
  enc, dec = rng.integers(2, V, (2, 30)), rng.integers(2, V, (2, 9))
  enc_mask, dec_mask = np.ones_like(enc), np.ones_like(dec)
  enc_mask[1, 11:] = 0  # right padding on both sides
  dec_mask[0, 6:] = 0
  return enc, enc_mask, dec, dec_mask


def _hf_out(model):
  enc, enc_mask, dec, dec_mask = _batch()
  return torch_logits(model, input_ids=enc, attention_mask=enc_mask, decoder_input_ids=dec,
                      decoder_attention_mask=dec_mask)


def test_import_matches_transformers(hf):
  tag, hf_model, _, wd = hf
  cfg, model, params = load_workdir(wd, scan_layers=False)  # unrolled: each layer's output is seen
  assert cfg.tie_embeddings == (tag == "v1.0")
  enc, enc_mask, dec, dec_mask = _batch()
  out = _hf_out(hf_model)
  logits, found = apply_capturing(model, params, enc, dec, None, enc_mask, None, dec_mask,
                                  names=("decoder_norm", "encoder_norm"))
  dm = dec_mask[..., None].astype(bool)
  record(f"t5 {tag}", "import logits", logits, out.logits.numpy(), np.broadcast_to(dm, logits.shape))
  record_hidden(f"t5 {tag}", "import encoder hidden", found, "encoder", "encoder_norm",
                out.encoder_hidden_states, enc_mask)
  record_hidden(f"t5 {tag}", "import decoder hidden", found, "decoder", "decoder_norm",
                out.decoder_hidden_states, dec_mask)


def test_export_reloads_in_transformers_and_round_trips_bitwise(hf, tmp_path):
  tag, hf_model, _, wd = hf
  out_hf, wd2 = str(tmp_path / "hf"), str(tmp_path / "wd2")
  convert.main([f"--from_workdir={wd}", f"--to_hf={out_hf}"])
  reloaded = T5ForConditionalGeneration.from_pretrained(out_hf, attn_implementation="eager").eval()
  a, b = _hf_out(reloaded).logits.numpy(), _hf_out(hf_model).logits.numpy()
  dm = _batch()[3][..., None].astype(bool)
  record(f"t5 {tag}", "export logits", a, b, np.broadcast_to(dm, a.shape))
  assert_reimport_is_bitwise(wd, out_hf, wd2)


def test_greedy_generation_matches_transformers(hf):
  _, hf_model, _, wd = hf
  enc, enc_mask, _, _ = _batch()
  prompts = [list(r[m.astype(bool)]) for r, m in zip(enc, enc_mask)]
  ours = decode.Decoder.from_workdir(wd).generate(prompts, max_new_tokens=8, stop_ids=(1,))
  with torch.no_grad():
    g = hf_model.generate(torch.tensor(enc), attention_mask=torch.tensor(enc_mask),
                          do_sample=False, max_new_tokens=8, use_cache=False)
  for o, row in zip(ours, g[:, 1:].tolist()):  # HF's rows start with decoder_start_token_id
    assert o == (row[:row.index(1)] if 1 in row else row)


def test_sentencepiece_vocabulary(hf):
  _, _, d, wd = hf
  tok = decode.Decoder.from_workdir(wd).tokenizer
  assert isinstance(tok, HFTokenizer)
  ref = spm.SentencePieceProcessor(model_file=os.path.join(d, "spiece.model"))
  assert tok.encode("the cat ran") == ref.encode("the cat ran")
  assert tok.decode(tok.encode("the cat ran")) == "the cat ran"
  assert (tok.pad_id, tok.eos_id) == (0, 1)
