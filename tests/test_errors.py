"""Bad input gets one clear message naming the field and the fix, before any compute, and WORKDIR is untouched."""
import hashlib
import os
import subprocess
import sys

import jax
import pytest

from lm.config import ConfigError
from lm.train import train
from tests.helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _snapshot(d):
  out = {}
  for root, _, files in os.walk(d):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, d)] = hashlib.sha256(fh.read()).hexdigest()
  return out


@pytest.mark.parametrize("overrides,devices,expected", [
    ({"model.num_heads": 3}, 1, ["model.num_heads", "model.d_model"]),
    ({"model.num_heads": 4, "model.num_kv_heads": 3}, 1, ["model.num_kv_heads", "multiple"]),
    ({"mesh.data": 3}, 8, ["mesh", "8"]),
    ({"mesh.data": 4, "mesh.fsdp": 2, "train.batch_size": 12}, 8, ["train.batch_size", "8"]),
    ({"data.seq_len": 64}, 1, ["data.seq_len", "model.max_len"]),
    ({"data.dataset": "no_such_dataset_xyz"}, 1, ["data.dataset"]),
    ({"data.dataset": "text", "data.text_glob": "/nonexistent/*.txt"}, 1, ["data.text_glob"]),
    ({"model.attention_impl": "flash"}, 1, ["model.attention_impl", "cudnn"]),
    ({"model.attention_impl": "cudnn"}, 1, ["model.attention_impl", "GPU", "'auto'"]),
    ({"model.weight_grad_impl": "fast"}, 1, ["model.weight_grad_impl", "transposed"]),
    ({"model.scan_unroll": -1}, 1, ["model.scan_unroll", "0 = auto"]),
    ({"model.attention_block_size": -64}, 1, ["model.attention_block_size", "0 = one block"]),
    ({"model.matmul_library": "mkl"}, 1, ["model.matmul_library", "onednn"]),
], ids=["heads_vs_d_model", "heads_vs_kv_heads", "mesh_product", "batch_vs_dp", "seq_len", "missing_dataset",
        "empty_glob", "attention_impl_name", "cudnn_without_gpu", "weight_grad_impl_name",
        "scan_unroll_negative", "attention_block_size_negative", "matmul_library_name"])
def test_config_errors(tmp_path, data_dir, overrides, devices, expected):
  wd = tmp_path / "run"
  with pytest.raises(ConfigError) as e:
    train(tiny_config(data_dir, **overrides), str(wd), devices=jax.devices()[:devices])
  for text in expected:
    assert text in str(e.value), str(e.value)
  assert not wd.exists() or not os.listdir(wd)  # nothing written for a run that never started


def test_workdir_with_other_config_is_refused_untouched(tmp_path, data_dir):
  wd = str(tmp_path / "run")
  cfg = tiny_config(data_dir, **{"train.num_steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2})
  train(cfg, wd, devices=jax.devices()[:1])
  before = _snapshot(wd)
  other = tiny_config(data_dir, **{"train.num_steps": 2, "model.d_model": 64, "train.learning_rate": 1e-3})
  with pytest.raises(ConfigError) as e:
    train(other, wd, devices=jax.devices()[:1])
  msg = str(e.value)
  assert "model.d_model: 32 in WORKDIR, 64 now" in msg and "train.learning_rate" in msg
  assert _snapshot(wd) == before


def test_cli_rejects_misspelt_field():
  r = subprocess.run([sys.executable, "-m", "experiments.train", "--config=experiments/configs/tiny_clm.py",
                      "--config.model.num_layer=4", "--workdir=/tmp/never_created_xyz"],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert "num_layer" in r.stderr and 'Did you mean "num_layers"' in r.stderr
  assert "Traceback" not in r.stderr
  assert not os.path.exists("/tmp/never_created_xyz")
