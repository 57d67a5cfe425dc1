"""The quickstart pipeline end to end at --scale=ci (slow: a few minutes on 2 cores)."""
import json
import os

import pytest

from experiments import quickstart


@pytest.mark.slow
def test_quickstart_ci_runs_and_resumes(tmp_path, capsys):
  workdir = str(tmp_path / "qs")
  rc = quickstart.main([f"--workdir={workdir}", "--scale=ci"])
  out = capsys.readouterr().out
  for stage in ("data", "pretrain"):
    assert os.path.exists(os.path.join(workdir, "stages", f"{stage}.json")), out
  if quickstart.sft_supported() is not None:  # the tuning issue's SFT data path is not in yet
    assert rc == 1 and "sft FAILED" in out
    pytest.skip(f"SFT not available: {quickstart.sft_supported()}")
  assert rc == 0, out
  report = json.load(open(os.path.join(workdir, "eval", "report.json")))
  assert any(g["family"] == "all" for g in report["groups"])
  assert "no-tools" in out
  assert quickstart.main([f"--workdir={workdir}", "--scale=ci"]) == 0
  assert capsys.readouterr().out.count("done earlier") == len(quickstart.STAGES)
