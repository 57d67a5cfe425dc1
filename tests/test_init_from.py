"""Fine-tuning starts from another run's params exactly, and refuses another model's."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lm.config import ConfigError
from lm.train import train
from tests.helpers import tiny_config


def _saved_params(workdir, step):
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored["state"]["params"]


def test_init_from_restores_params_exactly_and_refuses_other_models(tmp_path):
  data_dir = str(tmp_path / "data")
  pre = str(tmp_path / "pre")
  train(tiny_config(data_dir, **{"train.num_steps": 3, "train.checkpoint_every": 3}), pre, devices=jax.devices()[:1])
  # lr is 0 at step 0 of a warmup: one step leaves the params exactly as loaded.
  tune = str(tmp_path / "tune")
  cfg = tiny_config(data_dir, **{"train.num_steps": 1, "train.warmup_steps": 10, "train.init_from": pre,
                                 "model.scan_layers": False, "seed": 7})
  summary = train(cfg, tune, devices=jax.devices()[:1])
  assert summary["start_step"] == 0
  a, b = _saved_params(pre, 3), _saved_params(tune, 1)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # A fresh init with seed 7 would differ: the params really came from the pretraining run.
  other = tiny_config(data_dir, **{"train.num_steps": 1, "model.d_model": 64, "train.init_from": pre})
  with pytest.raises(ConfigError) as e:
    train(other, str(tmp_path / "bad"), devices=jax.devices()[:1])
  assert "model.d_model: 32 in the checkpoint, 64 now" in str(e.value)
  assert not os.path.exists(str(tmp_path / "bad" / "config.json"))
