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


@pytest.mark.slow
def test_interleaved_variants_alternate_steps_in_one_process(tmp_path):
  out = tmp_path / "ab.json"
  p = _run([TINY[0], f"--benchmark_flags={' '.join(TINY[1:])}", "--interleave", "--steps=6",
            "--variant=blocked:",
            "--variant=xla:--config.model.attention_impl=xla --xla_cpu_prefer_vector_width=512",
            f"--out={out}"], tmp_path)
  assert p.returncode == 0, p.stderr[-2000:]
  r = json.loads(out.read_text())
  assert set(r["summary"]) == {"blocked", "xla"}
  assert all(len(t) == 6 for t in r["times_s"].values())
  first, second = r["summary"]["blocked"], r["summary"]["xla"]
  assert first["vs_first"] == 1.0 and first["vs_first_quartiles"] == [1.0, 1.0]
  ratios = [b / a for a, b in zip(r["times_s"]["blocked"], r["times_s"]["xla"])]
  assert second["vs_first"] == pytest.approx(sorted(ratios)[2] / 2 + sorted(ratios)[3] / 2)
  assert 0 < second["mfu"] and second["tokens_per_s"] > 0
  assert "interleaved steps" in p.stdout


@pytest.mark.parametrize("variants,named", [
    (["--variant=a:--nodecode", "--variant=b:"], "neither a --config.FIELD=VALUE override"),
    (["--variant=a:--config.model.no_such_field=1", "--variant=b:"], "no field 'no_such_field'"),
    (["--variant=a:--config.model.scan_layers=maybe", "--variant=b:"], "expected true or false"),
    (["--variant=a:--config.model.num_layers=two", "--variant=b:"], "expected int"),
    (["--variant=a@OTHER:", "--variant=b:"], "this checkout only"),
])
def test_bad_interleaved_variants_are_refused_before_compiling(tmp_path, variants, named):
  other = tmp_path / "other"
  (other / "experiments").mkdir(parents=True)
  (other / "experiments" / "benchmark.py").write_text("")
  p = _run([TINY[0], "--interleave", *[v.replace("OTHER", str(other)) for v in variants]], tmp_path)
  assert p.returncode == 2 and named in p.stderr, p.stderr[-2000:]


def test_an_unknown_xla_option_is_refused_with_xlas_message(tmp_path):
  p = _run([TINY[0], f"--benchmark_flags={' '.join(TINY[1:])}", "--interleave", "--steps=2",
            "--variant=a:", "--variant=b:--xla_no_such_option=1"], tmp_path)
  assert p.returncode == 2 and "xla_no_such_option" in p.stderr, p.stderr[-2000:]
