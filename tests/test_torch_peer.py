"""The PyTorch peer (experiments/torch_peer.py) trains the configured sizes and reports
numbers measured the same way as experiments/benchmark.py."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from lm.config import ConfigError, ModelConfig  # noqa: E402
from lm.metrics import flops_per_token  # noqa: E402
from tests.test_benchmark import ROOT, TINY  # noqa: E402


def _gpt2_params(v, d, layers, f, positions):
  per_layer = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * f + f) + (f * d + d)
  return v * d + positions * d + layers * per_layer + 2 * d


@pytest.mark.slow
def test_torch_peer_trains_the_config_and_reports_consistent_numbers(tmp_path):
  out = tmp_path / "peer.json"
  p = subprocess.run([sys.executable, "-m", "experiments.torch_peer", *TINY, "--steps=20",
                      "--config.train.learning_rate=0.01", f"--out={out}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  r = json.loads(out.read_text())
  assert "GPT2LMHeadModel" in p.stdout and "PyTorch peak" in p.stdout
  # the peer has exactly the configured sizes (GPT-2 adds biases and a learned position table)
  assert r["num_params"] == _gpt2_params(256, 32, 2, 64, 64)
  # FLOPs per token by the same formula as the JAX benchmark
  cfg = ModelConfig(vocab_size=256, d_model=32, num_heads=2, mlp_dim=64, num_layers=2, max_len=64,
                    mlp_activation="gelu", norm="layernorm")
  assert r["flops_per_token"] == pytest.approx(flops_per_token(cfg, 32))
  assert r["tokens_per_s"] == pytest.approx(4 * 32 / r["step_time_s"])
  assert r["achieved_flops"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"])
  assert r["mfu_torch_peak"] == pytest.approx(r["achieved_flops"] / r["torch_peak_flops"])
  assert r["mfu_jax_peak"] == pytest.approx(r["achieved_flops"] / r["jax_peak_flops"])
  assert r["step_time_min_s"] <= r["step_time_s"]
  # the timed steps are real optimizer steps: 23 of them on one batch lower its loss
  assert r["loss"] < r["first_loss"] - 0.5, (r["first_loss"], r["loss"])


@pytest.mark.parametrize("field,value,named", [
    ("mlp_activation", "swiglu", "model.mlp_activation='swiglu'"),
    ("num_kv_heads", 1, "model.num_kv_heads=1"),
    ("family", "encoder", "model.family='encoder'"),
    ("tie_embeddings", False, "model.tie_embeddings=False"),
])
def test_torch_peer_refuses_what_gpt2_cannot_express(field, value, named):
  from experiments.configs.ref_tiny import get_config
  from experiments.torch_peer import check_supported

  cfg = get_config()
  check_supported(ModelConfig.from_config(cfg.model), cfg)  # the reference config itself runs
  cfg.model[field] = value
  with pytest.raises(ConfigError, match=named.replace("(", r"\(")) as e:
    check_supported(ModelConfig.from_config(cfg.model), cfg)
  assert "use " in str(e.value)  # and says what to set instead
