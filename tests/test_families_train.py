"""Each family trained through lm.train: 1 device equals 8 (data x fsdp x tensor), resume is
exact, and short runs learn (loss falls; MLM and NSP accuracy clearly above chance)."""
import jax
import numpy as np
import pytest

from lm.metrics import read_metrics
from lm.train import train
from tests.helpers import losses, tiny_config

FAMILIES = {
    # BERT's architecture exactly (lm/bert.py), MLM + NSP
    "bert": {"objective": "mlm_nsp", "model.family": "encoder", "model.norm_placement": "post",
             "model.norm": "layernorm", "model.norm_eps": 1e-12, "model.embed_norm": True,
             "model.mlp_activation": "gelu_exact", "model.use_bias": True,
             "model.position": "learned", "model.type_vocab_size": 2, "model.num_kv_heads": 0,
             "data.synthetic.topics": 4, "train.learning_rate": 1e-3},
    "t5": {"objective": "span_corruption", "model.family": "encoder_decoder",
           "model.position": "relative", "model.num_decoder_layers": 1},
    "prefix_lm": {"objective": "prefix_lm", "model.family": "decoder"},
}


def family_config(data_dir, family, **overrides):
  return tiny_config(data_dir, **{**FAMILIES[family], **overrides})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _eval_records(workdir):
  return [r for r in read_metrics(workdir) if r["split"] == "eval"]


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_device_equals_eight(tmp_path, data_dir, family):
  common = {"train.num_steps": 3, "train.eval_every": 3, "train.checkpoint_every": 3}
  one = family_config(data_dir, family, **common, **{"mesh.data": 1})
  train(one, str(tmp_path / "one"), devices=jax.devices()[:1])
  eight = family_config(data_dir, family, **common,
                        **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  train(eight, str(tmp_path / "eight"), devices=jax.devices()[:8])
  a, b = losses(str(tmp_path / "one")), losses(str(tmp_path / "eight"))
  assert [s for s, _ in a] == [1, 2, 3]
  np.testing.assert_allclose([l for _, l in a], [l for _, l in b], rtol=2e-5)
  ev_a, ev_b = _eval_records(str(tmp_path / "one"))[0], _eval_records(str(tmp_path / "eight"))[0]
  for key in ("loss", "mlm_accuracy", "nsp_accuracy", "accuracy", "bits_per_byte"):
    if key in ev_a:
      np.testing.assert_allclose(ev_a[key], ev_b[key], rtol=2e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_resume_is_exact(tmp_path, data_dir, family):
  common = {"train.checkpoint_every": 2, "train.eval_every": 4, "mesh.data": 2}
  full = family_config(data_dir, family, **common, **{"train.num_steps": 4})
  train(full, str(tmp_path / "full"), devices=jax.devices()[:2])
  part = family_config(data_dir, family, **common, **{"train.num_steps": 2})
  resumed = str(tmp_path / "resumed")
  train(part, resumed, devices=jax.devices()[:2])
  summary = train(full, resumed, devices=jax.devices()[:2])  # same command, more steps
  assert summary["start_step"] == 2
  assert losses(resumed) == losses(str(tmp_path / "full"))  # bitwise
  # the short run also evaluated at its last step, 2
  assert losses(resumed, "eval")[-1] == losses(str(tmp_path / "full"), "eval")[-1]


@pytest.mark.slow
def test_encoder_learns_mlm_and_nsp(tmp_path, data_dir):
  # A pre-norm RoPE encoder learns in fewer steps than BERT's post-norm with learned
  # positions (which must learn where tokens are first); the objective is the same.
  # Eight topics of 16 words: most NotNext pairs mix two topics' words.
  cfg = family_config(data_dir, "bert", **{
      "model.norm_placement": "pre", "model.embed_norm": False, "model.position": "rope",
      "model.vocab_size": 512, "data.synthetic.topics": 8, "data.synthetic.num_words": 16,
      "data.synthetic.branching": 2, "data.seq_len": 64, "model.max_len": 64,
      "model.d_model": 64, "model.mlp_dim": 128, "train.batch_size": 32,
      "train.learning_rate": 3e-3, "train.num_steps": 250, "train.warmup_steps": 20,
      "train.log_every": 25, "train.eval_every": 250, "train.checkpoint_every": 250,
      "train.eval_batches": 4})
  summary = train(cfg, str(tmp_path / "run"), devices=jax.devices()[:1])
  ev = summary["eval"]
  train_losses = [l for _, l in losses(str(tmp_path / "run"))]
  assert train_losses[-1] < 0.75 * train_losses[0], train_losses
  assert ev["mlm_accuracy"] > 0.2, ev  # chance is ~1/500; the commonest token ~0.1
  assert ev["nsp_accuracy"] > 0.65, ev  # chance is 0.5


@pytest.mark.slow
@pytest.mark.parametrize("family", ["t5", "prefix_lm"])
def test_loss_falls(tmp_path, data_dir, family):
  cfg = family_config(data_dir, family, **{
      "train.num_steps": 60, "train.warmup_steps": 6, "train.log_every": 1,
      "train.eval_every": 60, "train.checkpoint_every": 60})
  summary = train(cfg, str(tmp_path / "run"), devices=jax.devices()[:1])
  train_losses = [l for _, l in losses(str(tmp_path / "run"))]
  assert train_losses[-1] < 0.6 * train_losses[0], train_losses
  assert summary["eval"]["accuracy"] > 0.1, summary["eval"]  # chance is ~1/300


@pytest.mark.parametrize("objective, family", [("mlm", "encoder"), ("seq2seq", "encoder_decoder")])
def test_other_objectives_train(tmp_path, data_dir, objective, family):
  cfg = tiny_config(data_dir, **{"objective": objective, "model.family": family, "mesh.data": 2,
                                 "train.num_steps": 2, "train.eval_every": 2,
                                 "train.checkpoint_every": 2})
  summary = train(cfg, str(tmp_path / "run"), devices=jax.devices()[:2])
  assert np.isfinite(summary["eval"]["loss"])
  assert ("mlm_accuracy" in summary["eval"]) == (objective == "mlm")
  assert ("bits_per_byte" in summary["eval"]) == (objective == "seq2seq")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "t5"])
def test_grad_accumulation_matches_full_batch(tmp_path, data_dir, family):
  common = {"train.num_steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2, "mesh.data": 2,
            "model.num_layers": 1}
  train(family_config(data_dir, family, **common), str(tmp_path / "full"), devices=jax.devices()[:2])
  train(family_config(data_dir, family, **common, **{"train.grad_accum_steps": 2}), str(tmp_path / "accum"),
        devices=jax.devices()[:2])
  a, b = losses(str(tmp_path / "full")), losses(str(tmp_path / "accum"))
  np.testing.assert_allclose([l for _, l in b], [l for _, l in a], rtol=1e-5)


def test_encoder_decoder_step_cost_counts_both_sides():
  from lm.config import ModelConfig
  from lm.metrics import step_cost

  cfg = ModelConfig(family="encoder_decoder", d_model=32, num_layers=2, num_decoder_layers=1, num_heads=4,
                    mlp_dim=64, vocab_size=320, mlp_activation="gelu")
  tokens, flops = step_cost(cfg, {"encoder_inputs": (8, 32), "decoder_inputs": (8, 16)})
  assert tokens == 8 * (32 + 16)
  attn, mlp, out = 4 * 32 * 32, 2 * 32 * 64, 32 * 320
  enc = 8 * 32 * (6 * 2 * (attn + mlp) + 12 * 2 * 32 * 32)
  dec = 8 * 16 * (6 * (attn + mlp) + 6 * 16 * 32)
  cross = 6 * (8 * 16 * (attn - 2 * 32 * 32) + 8 * 32 * 2 * 32 * 32) + 8 * 16 * 12 * 32 * 32
  assert flops == enc + dec + cross + 6 * 8 * 16 * out
