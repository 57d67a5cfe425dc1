"""Training loop contracts: device-count invariance, exact resume, learning to the entropy floor."""
import json
import os

import jax
import numpy as np
import pytest

from lm.train import train
from tests.helpers import losses, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("mesh", [dict(data=8, fsdp=1, tensor=1), dict(data=2, fsdp=2, tensor=2)],
                         ids=["data8", "data2_fsdp2_tensor2"])
def test_one_device_equals_eight(tmp_path, data_dir, mesh):
  one = tiny_config(data_dir, **{"mesh.data": 1})
  train(one, str(tmp_path / "one"), devices=jax.devices()[:1])
  eight = tiny_config(data_dir, **{f"mesh.{k}": v for k, v in mesh.items()})
  train(eight, str(tmp_path / "eight"), devices=jax.devices()[:8])
  a, b = losses(str(tmp_path / "one")), losses(str(tmp_path / "eight"))
  assert [s for s, _ in a] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([l for _, l in a], [l for _, l in b], rtol=2e-5)
  np.testing.assert_allclose(losses(str(tmp_path / "one"), "eval")[0][1],
                             losses(str(tmp_path / "eight"), "eval")[0][1], rtol=2e-5)


def test_workdir_files(tmp_path, data_dir):
  cfg = tiny_config(data_dir, **{"train.num_steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2})
  wd = str(tmp_path / "run")
  summary = train(cfg, wd, devices=jax.devices()[:2])
  with open(os.path.join(wd, "config.json")) as f:
    assert json.load(f) == cfg.to_dict()
  with open(os.path.join(wd, "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
  for key in ("git_sha", "packages", "devices", "process_count", "start_time"):
    assert key in manifest
  assert os.path.exists(os.path.join(wd, "tokenizer.model"))
  assert os.listdir(os.path.join(wd, "tensorboard"))
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2"]
  rec = summary["eval"]
  for key in ("loss", "perplexity", "bits_per_byte", "entropy_floor_bpb", "tokens_seen", "flops_seen", "wall_s"):
    assert key in rec
  assert rec["tokens_seen"] == 2 * 8 * 32
  # Starting the finished run again does nothing new and keeps its metrics.
  before = losses(wd)
  again = train(cfg, wd, devices=jax.devices()[:2])
  assert again["start_step"] == 2 and losses(wd) == before
