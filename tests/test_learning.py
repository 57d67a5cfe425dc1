"""A small model learns the synthetic corpus down to near its known entropy floor."""
import jax
import pytest

from lm.train import train
from tests.helpers import tiny_config


@pytest.mark.slow
def test_reaches_entropy_floor(tmp_path):
  cfg = tiny_config(str(tmp_path / "data"), **{
      "data.synthetic.train_docs": 4000, "data.synthetic.eval_docs": 200, "data.tokenizer_docs": 2000,
      "data.seq_len": 64, "model.max_len": 64, "model.vocab_size": 384,
      "model.d_model": 64, "model.num_heads": 4, "model.num_kv_heads": 4, "model.mlp_dim": 256,
      "train.batch_size": 32, "train.num_steps": 300, "train.warmup_steps": 20, "train.learning_rate": 5e-3,
      "train.log_every": 50, "train.eval_every": 300, "train.checkpoint_every": 300, "train.eval_batches": 8,
  })
  summary = train(cfg, str(tmp_path / "run"), devices=jax.devices()[:1])
  ev = summary["eval"]
  floor = ev["entropy_floor_bpb"]
  # a finite eval sample can land slightly under the floor, never far under it
  assert 0.95 * floor <= ev["bits_per_byte"] <= 1.15 * floor, ev
