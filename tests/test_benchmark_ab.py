"""experiments/benchmark_ab.py alternates benchmark runs of variants and summarises them."""
import json
import os
import subprocess
import sys

import pytest

from tests.test_benchmark import ROOT, TINY


def _run(args, tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  return subprocess.run([sys.executable, "-m", "experiments.benchmark_ab", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_variants_alternate_and_summarise(tmp_path):
  out = tmp_path / "ab.json"
  p = _run([TINY[0], f"--benchmark_flags={' '.join(TINY[1:])}",
            "--variant=xla:--config.model.weight_grad_impl=xla", "--variant=default:", "--rounds=1",
            f"--out={out}"], tmp_path)
  assert p.returncode == 0, p.stderr[-2000:]
  r = json.loads(out.read_text())
  assert [x["variant"] for x in r["runs"]] == ["xla", "default"]
  assert r["runs"][0]["vs_first"] == 1.0
  assert r["runs"][1]["vs_first"] == pytest.approx(r["runs"][1]["step_time_s"] / r["runs"][0]["step_time_s"])
  assert set(r["summary"]) == {"xla", "default"} and all(s["step_time_s"] > 0 for s in r["summary"].values())
  assert "median over rounds" in p.stdout


@pytest.mark.parametrize("variants,named", [
    (["--variant=only:"], "at least two"),
    (["--variant=a:", "--variant=a:--steps=20"], "different names"),
    (["--variant=noformat", "--variant=b:"], "NAME:ARGS"),
    (["--variant=a@/nonexistent:", "--variant=b:"], "no experiments/benchmark.py"),
])
def test_bad_variants_are_refused_before_running(tmp_path, variants, named):
  p = _run([TINY[0], *variants], tmp_path)
  assert p.returncode == 2 and named in p.stderr, p.stderr[-2000:]
