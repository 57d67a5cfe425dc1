"""The ablation runner: {root} filling, validation, skip rules and the report table."""
import json
import os

import pytest

from experiments import ablation
from experiments.sweep import SweepError


def _write_spec(tmp_path, body: str) -> str:
  path = tmp_path / "abl.py"
  path.write_text(body)
  return str(path)


SPEC = '''
def get_ablation():
  return {"runs": [
      {"name": "pre", "config": "experiments/configs/tiny_clm.py", "overrides": {"train.num_steps": 4}},
      {"name": "tune", "config": "experiments/configs/tiny_clm.py",
       "overrides": {"train.num_steps": 2, "train.init_from": "{root}/pre"}}],
    "evals": [{"run": "tune", "args": ["--num_per_family=1"]},
              {"run": "tune", "name": "train", "args": ["--split=train"]}]}
'''


def test_runs_fill_root_and_check_fields(tmp_path):
  spec = ablation.load_ablation(_write_spec(tmp_path, SPEC))
  runs = ablation.expand_runs(spec, "/r")
  assert [r.name for r in runs] == ["pre", "tune"]
  assert runs[1].workdir == "/r/tune"
  assert runs[1].config["train"]["init_from"] == "/r/pre" and runs[1].num_steps == 2
  bad = SPEC.replace("train.num_steps\": 2", "train.num_stepz\": 2")
  with pytest.raises(SweepError, match="num_stepz"):
    ablation.expand_runs(ablation.load_ablation(_write_spec(tmp_path, bad)), "/r")
  with pytest.raises(SweepError, match="unknown run 'nope'"):
    ablation.load_ablation(_write_spec(tmp_path, SPEC.replace('"run": "tune"', '"run": "nope"')))
  with pytest.raises(SweepError, match="names repeat"):
    ablation.load_ablation(_write_spec(tmp_path, SPEC.replace('"name": "tune"', '"name": "pre"')))


def test_dry_run_prints_commands_in_order(tmp_path, capsys):
  path = _write_spec(tmp_path, SPEC)
  assert ablation.main([f"--ablation={path}", f"--root={tmp_path / 'root'}", "--dry_run"]) == 0
  out = capsys.readouterr().out
  assert out.index("pre (new)") < out.index("tune (new)") < out.index("evaluate tune")
  assert f"--config.train.init_from={tmp_path / 'root' / 'pre'}" in out
  assert f"--out={tmp_path / 'root' / 'tune' / ablation.EVAL_DIR} --num_per_family=1" in out
  assert f"--out={tmp_path / 'root' / 'tune' / ablation.EVAL_DIR}_train --split=train" in out
  assert not os.path.exists(tmp_path / "root")


def test_table_reads_final_metrics_and_agent_success(tmp_path):
  spec = ablation.load_ablation(_write_spec(tmp_path, SPEC))
  root = str(tmp_path / "root")
  runs = ablation.expand_runs(spec, root)
  tune = os.path.join(root, "tune")
  os.makedirs(os.path.join(tune, ablation.EVAL_DIR))
  with open(os.path.join(tune, "metrics.jsonl"), "w") as f:
    for rec in ({"split": "train", "step": 2, "num_params": 1234, "tokens_seen": 64,
                 "flops_seen": 5e9, "wall_s": 3.5},
                {"split": "eval", "step": 2, "loss": 1.25, "accuracy": 0.5}):
      f.write(json.dumps(rec) + "\n")
    f.write('{"split": "train", "step": 3, "lo')  # a torn last line is ignored
  report = {"groups": [{"family": "single", "episodes": 4, "success": {"rate": 0.5, "lo": 0.1, "hi": 0.9}},
                       {"family": "all", "episodes": 8, "success": {"rate": 0.25, "lo": 0.07, "hi": 0.59}}]}
  with open(os.path.join(tune, ablation.EVAL_DIR, "report.json"), "w") as f:
    json.dump(report, f)
  text, rows = ablation.table(spec, runs)
  assert rows[0]["loss"] is None and rows[0]["agent_heldout"] is None
  assert rows[1]["loss"] == 1.25 and rows[1]["params"] == 1234 and rows[1]["flops"] == 5e9
  assert rows[1]["agent_heldout"]["rate"] == 0.25
  assert "| tune | clm | decoder | 2 | 1.25 | 0.5 | 1234 | 64 | 5e+09 | 3.5 | 25% [7, 59] of 8 | - |" in text
  assert "agent success, heldout [95% CI] | agent success, train [95% CI] |" in text
