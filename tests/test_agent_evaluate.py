"""`python -m agent.evaluate` writes the reports (fake backend and untrained model)."""
import json
import os

import jax
import jax.numpy as jnp

from agent import evaluate
from agent.demos import demonstration_episodes
from agent.lm_backend import FakeBackend, JaxBackend
from agent.policy import LMPolicy
from lm.config import ModelConfig
from lm.data.tokenizer import train_tokenizer
from lm.models import make_model


def _tokenizer(tmp_path):
  texts = ["\n".join(m["content"] for m in r.messages) for r in demonstration_episodes(30)]
  return train_tokenizer(texts, 600, str(tmp_path / "tok.model"))


def test_evaluate_cli_writes_reports_and_comparison(tmp_path, capsys):
  tok = _tokenizer(tmp_path)
  refuse = 'Action: {"name":"refuse","arguments":{"reason":"no"}}'
  make = lambda args: LMPolicy(FakeBackend(tok, lambda prompt: refuse))
  out = tmp_path / "eval"
  rc = evaluate.main(["--workdir", str(tmp_path), "--num_per_family=2", f"--out={out}"],
                     make_policy=make)
  assert rc == 0
  for name in ("report.json", "report.md", "trajectories.jsonl", "compare.md", "compare.json",
               "baseline_no_tools/report.json"):
    assert os.path.exists(out / name), name
  report = json.loads((out / "report.json").read_text())
  irrelevance = [g for g in report["groups"] if g["family"] == "irrelevance"][0]
  assert irrelevance["irrelevance_acc"] == 1.0
  assert "no-tools" in (out / "compare.md").read_text()
  assert "tuned" in capsys.readouterr().out


def test_evaluate_oracle_baseline_and_constrained_untrained_model(tmp_path):
  tok = _tokenizer(tmp_path)
  cfg = ModelConfig(vocab_size=640, d_model=32, num_layers=1, num_heads=2, mlp_dim=64, max_len=256)
  params = make_model(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  make = lambda args: LMPolicy(JaxBackend(cfg, params, tok), constrained=args.constrained)
  out = tmp_path / "eval"
  rc = evaluate.main(["--workdir", str(tmp_path), "--num_per_family=1", "--constrained",
                      "--baseline=oracle", "--max_new_tokens=64", f"--out={out}"], make_policy=make)
  assert rc == 0
  lm = json.loads((out / "report.json").read_text())
  oracle = json.loads((out / "baseline_oracle/report.json").read_text())
  overall = lambda r: [g for g in r["groups"] if g["family"] == "all"][0]
  assert overall(lm)["validity"] == 1.0
  assert overall(oracle)["success"]["rate"] == 1.0
