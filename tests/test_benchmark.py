"""The benchmark CLI runs end to end on a tiny model and reports consistent numbers."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=experiments/configs/ref_tiny.py", "--config.model.d_model=32",
        "--config.model.num_heads=2", "--config.model.mlp_dim=64", "--config.model.vocab_size=256",
        "--config.model.num_layers=2", "--config.train.batch_size=4", "--config.data.seq_len=32",
        "--config.model.max_len=64", "--matmul_n=256"]


def _run(args, tmp_path):
  out = tmp_path / "bench.json"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  p = subprocess.run([sys.executable, "-m", "experiments.benchmark", *TINY, *args, f"--out={out}"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  return p.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_benchmark_reports_throughput_mfu_and_decode(tmp_path):
  stdout, r = _run(["--steps=20"], tmp_path)
  assert "MFU" in stdout and "tokens/s" in stdout
  assert r["tokens_per_s"] == pytest.approx(4 * 32 / r["step_time_s"])
  assert r["achieved_flops"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"])
  assert r["mfu"] == pytest.approx(r["achieved_flops"] / r["peak_flops"])
  assert 0 < r["mfu"] < 1.5 and r["peak_source"]
  assert r["step_time_min_s"] <= r["step_time_quartiles_s"][0] <= r["step_time_s"] <= r["step_time_quartiles_s"][1]
  assert "quartiles" in stdout
  before, after = r["peak_flops_before_after"]  # CPU: measured twice, the better one counts
  assert r["peak_flops"] == max(before, after) and "before" in stdout
  assert r["matmul_library"] == "auto" and "matmul library" in stdout
  assert r["decode"]["decode_kv_cache_speedup"] > 0 and r["decode"]["decode_tokens_per_s_kv_cache"] > 0


def test_benchmark_compile_only(tmp_path):
  stdout, r = _run(["--compile_only", "--config.model.num_layers=3"], tmp_path)
  assert "3 layers (scan_layers=True)" in stdout and r["compile_s"] > 0 and r["num_layers"] == 3


def test_benchmark_op_profile_names_the_matmuls(tmp_path):
  stdout, r = _run(["--steps=20", "--nodecode", "--op_profile=500"], tmp_path)
  assert "ops per step: matmuls" in stdout
  rows = r["op_profile"]
  assert 0 < len(rows) <= 500
  assert [row["ms_per_step"] for row in rows] == sorted((row["ms_per_step"] for row in rows), reverse=True)
  # Synchronous ops run on XLA:CPU's 2 pool threads or the launching thread, one at a time each;
  # an asynchronous op (launch -> completion) lies within one traced step.
  traced_ms = r["op_profile_traced_step_ms"]
  # the traced wall time split by what ran covers the traced steps (first op to last, so a bit less)
  wall = r["op_profile_wall_ms"]
  assert all(v >= 0 for v in wall.values()) and 0 < sum(wall.values()) <= 1.01 * traced_ms
  assert "traced wall time per step by what ran" in stdout
  assert sum(row["ms_per_step"] for row in rows if not row["async_op"]) <= 3 * traced_ms
  assert all(row["ms_per_step"] <= traced_ms for row in rows if row["async_op"])
  matmuls = [row for row in rows if row["gflop"] > 0]
  assert matmuls, rows
  # every matmul comes from a named einsum of the model, forward or backward
  assert all(row["source"].startswith(("FWD/", "BWD/")) for row in matmuls), matmuls
  # the tied logits: 2 * tokens * d_model * vocab FLOPs in one op
  logits = [row for row in matmuls if "token_embed.attend" in row["source"] and row["source"].startswith("FWD/")]
  assert logits and logits[0]["gflop"] == pytest.approx(2 * 4 * 32 * 32 * 256 / 1e9)
