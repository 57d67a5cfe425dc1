"""init_from_params="matching": an MLM encoder warm-starts a decoder; heads stay fresh; shapes checked."""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lm.config import ConfigError
from lm.train import train
from lm.warm_start import plan
from tests.helpers import tiny_config


def _saved_params(workdir, step):
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored["state"]["params"]


def test_plan_prefers_same_stack_then_the_other_family():
  saved = {("encoder", "layers", "q"): (2, 4), ("token_embed", "embedding"): (9, 4),
           ("mlm_head", "bias"): (9,)}
  target = {("decoder", "layers", "q"): (2, 4), ("token_embed", "embedding"): (9, 4),
            ("final_norm", "scale"): (4,)}
  loaded, fresh, bad = plan(target, saved)
  assert loaded == {("decoder", "layers", "q"): ("encoder", "layers", "q"),
                    ("token_embed", "embedding"): ("token_embed", "embedding")}
  assert fresh == [("final_norm", "scale")] and bad == []
  both = {**saved, ("decoder", "layers", "q"): (2, 4)}
  assert plan(target, both)[0][("decoder", "layers", "q")] == ("decoder", "layers", "q")
  assert plan({("token_embed", "embedding"): (8, 4)}, saved)[2] == [
      (("token_embed", "embedding"), (8, 4), ("token_embed", "embedding"), (9, 4))]


def test_mlm_encoder_warm_starts_a_decoder(tmp_path):
  data_dir = str(tmp_path / "data")
  pre = str(tmp_path / "mlm")
  train(tiny_config(data_dir, **{"objective": "mlm", "model.family": "encoder",
                                 "train.num_steps": 2, "train.checkpoint_every": 2}),
        pre, devices=jax.devices()[:1])
  tune = str(tmp_path / "clm")
  # lr is 0 at step 0 of a warmup: one step leaves loaded params exactly as loaded.
  cfg = tiny_config(data_dir, **{"train.num_steps": 1, "train.warmup_steps": 10, "train.init_from": pre,
                                 "train.init_from_params": "matching", "model.scan_layers": False})
  train(cfg, tune, devices=jax.devices()[:1])
  src, dst = _saved_params(pre, 2), _saved_params(tune, 1)
  jax.tree.map(np.testing.assert_array_equal, src["encoder"], dst["decoder"])
  np.testing.assert_array_equal(src["token_embed"]["embedding"], dst["token_embed"]["embedding"])
  report = json.load(open(os.path.join(tune, "init_from.json")))
  assert report["fresh"] == [] or all("head" not in f for f in report["fresh"])
  assert any(r.startswith("encoder/layers/") and "-> decoder/layers/" in r for r in report["renamed"])
  # The default mode still refuses another model; "matching" refuses other shapes, naming them.
  with pytest.raises(ConfigError, match="model.family: 'encoder' in the checkpoint"):
    train(tiny_config(data_dir, **{"train.init_from": pre}), str(tmp_path / "bad1"), devices=jax.devices()[:1])
  wide = tiny_config(data_dir, **{"train.init_from": pre, "train.init_from_params": "matching",
                                  "model.mlp_dim": 128})
  with pytest.raises(ConfigError, match=r"decoder/layers/mlp/wo/kernel: \(2, 128, 32\) here"):
    train(wide, str(tmp_path / "bad2"), devices=jax.devices()[:1])
  assert not os.path.exists(str(tmp_path / "bad2" / "config.json"))
