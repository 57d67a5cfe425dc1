"""SFT data and loss: only response tokens count; pretrain -> tune -> decode on a toy task."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import chat
from lm.config import ConfigError, ModelConfig
from lm.data import instructions, sft, toy_tasks
from lm.data.tokenizer import train_tokenizer
from lm.objectives import get_objective
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  texts = ["reverse: a b c -> c b a, the quick brown fox " * 3] * 50
  return train_tokenizer(texts, 320, str(tmp_path_factory.mktemp("tok") / "t.model"))


MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "reverse: a b"},
        {"role": "assistant", "content": "b a"}, {"role": "user", "content": "again"},
        {"role": "assistant", "content": "b a"}]


def test_loss_mask_is_exactly_the_response_tokens(tok):
  ex = sft.clm_examples(MSGS, tok, 64)[0]
  ids = np.concatenate([ex["inputs"][:1], ex["targets"]])
  end, asst = tok.special_id("<|end|>"), tok.special_id("<|assistant|>")
  expect, inside = [], False
  for t in ids[1:]:  # a target is learned iff it is inside an assistant turn (content or <|end|>)
    expect.append(1.0 if inside else 0.0)
    if t == end:
      inside = False
    if t == asst:
      inside = True
  np.testing.assert_array_equal(ex["weights"], expect)
  learned = ex["targets"][ex["weights"] > 0].tolist()
  answer = tok.encode("b a") + [end]
  assert learned == answer + answer


def _batch(tok, seq_len, batch_size=2):
  cfg = tiny_config("", **{"objective": "sft", "data.seq_len": seq_len})
  tokenize, make, new_packer = sft.preprocessing(cfg, tok, batch_size, seq_len)
  packer = new_packer()
  for m in [MSGS, chat.from_prompt_response("reverse: c d e", "e d c"), MSGS[1:3]]:
    for ex in make(m, None, None):
      assert packer.add(ex)
  return {k: jnp.asarray(v) for k, v in packer.batch.items()}


def test_padding_and_prompt_tokens_contribute_nothing(tok):
  obj = get_objective("sft")
  model = obj.make_model(ModelConfig(vocab_size=320, d_model=32, num_layers=1, num_heads=2,
                                     mlp_dim=64, max_len=128))
  b32, b96 = _batch(tok, 48), _batch(tok, 96)
  assert b96["segment_ids"].max() >= 2  # packed: examples share rows
  params = obj.init_params(model, jax.random.key(0), b32)
  l32, _ = obj.loss(model, params, b32, deterministic=True)
  l96, _ = obj.loss(model, params, b96, deterministic=True)  # more padding, same examples
  np.testing.assert_allclose(l32, l96, rtol=1e-5)
  # changing prompt tokens' targets or padding tokens changes nothing
  w = b96["weights"]
  noisy = dict(b96, targets=jnp.where(w > 0, b96["targets"], 7))
  np.testing.assert_allclose(obj.loss(model, params, noisy, deterministic=True)[0], l96, rtol=1e-6)
  assert float(obj.loss_normalizer(b96)) == float(w.sum())


def test_seq2seq_examples(tok):
  exs = sft.seq2seq_examples(MSGS, tok, 64, 16)
  assert len(exs) == 2
  assert exs[0]["encoder_inputs"][-1] == tok.special_id("<|assistant|>")
  assert exs[0]["decoder_targets"].tolist() == tok.encode("b a") + [tok.special_id("<|end|>")]
  assert exs[0]["decoder_inputs"][0] == tok.bos_id


def test_instruction_files_are_validated(tmp_path):
  good = tmp_path / "a.jsonl"
  good.write_text('{"prompt": "p", "response": "r"}\n\n'
                  '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n')
  assert len(list(instructions.read_conversations([str(good)]))) == 2
  bad = tmp_path / "b.jsonl"
  bad.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p", "reply": "r"}\n')
  with pytest.raises(ConfigError, match=r"b.jsonl:2: field 'response'"):
    list(instructions.read_conversations([str(bad)]))
  bad.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
  with pytest.raises(ConfigError, match=r"b.jsonl:1: field messages\[0\].role"):
    list(instructions.read_conversations([str(bad)]))
  with pytest.raises(ConfigError, match="instructions_glob"):
    instructions.check_config(str(tmp_path / "none*.jsonl"), "", 0.1)


def sft_config(data_dir, **kw):
  c = tiny_config(data_dir, **{"model.d_model": 64, "model.mlp_dim": 128, "model.max_len": 64,
                               "data.seq_len": 64})
  for k, v in kw.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


@pytest.mark.slow
def test_pretrain_tune_decode_toy_task(tmp_path):
  from lm.decode import Decoder
  from lm.train import train
  data_dir = str(tmp_path / "data")
  pre = str(tmp_path / "pre")
  train(sft_config(data_dir, **{"train.num_steps": 20, "train.checkpoint_every": 20}), pre,
        devices=jax.devices()[:1])
  train_file, held_file = toy_tasks.write_task(str(tmp_path / "toy"), num_held_out=40)
  tune = str(tmp_path / "tune")
  cfg = sft_config(data_dir, **{
      "objective": "sft", "data.dataset": "instructions", "data.instructions_glob": train_file,
      "data.eval_fraction": 0.02, "train.init_from": pre, "train.num_steps": 400,
      "train.batch_size": 16, "train.learning_rate": 3e-3, "train.warmup_steps": 20,
      "train.eval_every": 400, "train.checkpoint_every": 400, "train.log_every": 50})
  train(cfg, tune, devices=jax.devices()[:1])
  with open(os.path.join(pre, "tokenizer.model"), "rb") as a, \
       open(os.path.join(tune, "tokenizer.model"), "rb") as b:
    assert a.read() == b.read()  # tuning kept the pretrained tokenizer
  dec = Decoder.from_workdir(tune)
  pairs = toy_tasks.read_pairs(held_file)
  outs = dec.generate_text([p for p, _ in pairs], max_new_tokens=12)
  exact = np.mean([o.strip() == r for o, (_, r) in zip(outs, pairs)])
  print(f"toy reverse held-out exact match: {exact:.3f}")
  with open(os.path.join(str(tmp_path), "exact.json"), "w") as f:
    json.dump({"exact": float(exact)}, f)
  assert exact >= 0.95, list(zip(outs, pairs))[:10]
