"""The generate CLI loads a run and writes completions and throughput."""
import json
import os
import subprocess
import sys

import jax
import pytest

from lm.train import train
from tests.helpers import tiny_config


@pytest.mark.slow
def test_generate_cli(tmp_path):
  run = str(tmp_path / "run")
  train(tiny_config(str(tmp_path / "data"), **{"train.num_steps": 2, "train.checkpoint_every": 2,
                                               "model.scan_layers": False}),
        run, devices=jax.devices()[:1])
  prompts = tmp_path / "p.jsonl"
  prompts.write_text('{"prompt": "hello"}\n{"messages": [{"role": "user", "content": "hi"}]}\n')
  out = tmp_path / "out.jsonl"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "experiments.generate", f"--workdir={run}",
                      f"--prompts_file={prompts}", f"--out={out}", "--max_new_tokens=5",
                      "--temperature=0.7", "--top_k=20"],
                     capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert r.returncode == 0, r.stderr[-2000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(rows) == 2 and all(r["tokens"] <= 5 for r in rows)
  stats = json.loads(r.stderr.strip().splitlines()[-1])
  assert stats["decode_tokens_per_s"] > 0 and stats["prefill_tokens_per_s"] > 0
  r = subprocess.run([sys.executable, "-m", "experiments.generate", f"--workdir={run}",
                      "--prompt=the", "--raw", "--beam_size=2", "--max_new_tokens=4", "--step=2"],
                     capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])["prompt"] == "the"
