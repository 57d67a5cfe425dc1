"""Sweep expansion, naming, validation, skip/resume (with a fake trainer) and the IsoFLOP helper."""
import glob
import json
import os
import textwrap

import pytest

from experiments import isoflop, sweep
from experiments.sweep import Sweep, SweepError
from lm.config import ModelConfig

CONFIG = "experiments/configs/tiny_clm.py"


def expand(**spec):
  return sweep.expand(Sweep.from_spec({"config": CONFIG, **spec}), root="/r")


def test_grid_and_seeds_names_and_order():
  runs = expand(grid={"model.num_layers": [1, 4]}, seeds=[0, 1], fixed={"train.num_steps": 7})
  assert [r.name for r in runs] == ["num_layers1_seed0", "num_layers1_seed1", "num_layers4_seed0", "num_layers4_seed1"]
  assert runs[3].overrides == {"train.num_steps": 7, "model.num_layers": 4, "seed": 1}
  assert runs[3].config["model"]["num_layers"] == 4 and runs[3].num_steps == 7
  assert runs[3].workdir == "/r/num_layers4_seed1"


def test_grid_is_a_product_zip_advances_together():
  grid = expand(grid={"model.d_model": [32, 64], "model.num_heads": [2, 4]})
  assert [r.name for r in grid] == ["d_model32_num_heads2", "d_model32_num_heads4", "d_model64_num_heads2",
                                    "d_model64_num_heads4"]
  zipped = expand(zip={"model.d_model": [32, 64], "model.num_heads": [2, 4]})
  assert [r.name for r in zipped] == ["d_model32_num_heads2", "d_model64_num_heads4"]
  both = expand(grid={"train.learning_rate": [1e-3, 3e-4]},
                zip=[{"model.d_model": [32, 64], "model.num_heads": [2, 4]}], seeds=[5])
  assert [r.name for r in both] == [
      "learning_rate0.001_d_model32_num_heads2_seed5", "learning_rate0.001_d_model64_num_heads4_seed5",
      "learning_rate0.0003_d_model32_num_heads2_seed5", "learning_rate0.0003_d_model64_num_heads4_seed5"]


def test_no_axes_is_one_run():
  assert [r.name for r in expand(fixed={"train.num_steps": 3})] == ["run"]


def test_short_names_disambiguate_suffixes():
  runs = expand(grid={"seed": [0], "data.synthetic.seed": [1]})
  assert [r.name for r in runs] == ["seed0_synthetic_seed1"]
  assert sweep.short_names(["a.b.x", "c.b.x", "y"]) == {"a.b.x": "a_b_x", "c.b.x": "c_b_x", "y": "y"}


def test_colliding_names_get_stable_suffixes():
  runs = expand(grid={"data.dataset": ["c4/en", "c4-en", "c4 en"]})
  assert [r.name for r in runs] == ["datasetc4-en", "datasetc4-en__2", "datasetc4-en__3"]
  assert expand(grid={"data.dataset": ["c4/en", "c4-en", "c4 en"]})[2].overrides["data.dataset"] == "c4 en"


def test_config_files_as_an_axis(tmp_path):
  for name, layers in (("deep", 6), ("shallow", 1)):
    (tmp_path / f"{name}.py").write_text(
        f"from lm.config import base_config\n\ndef get_config():\n  c = base_config()\n"
        f"  c.model.num_layers = {layers}\n  return c\n")
  configs = [str(tmp_path / "deep.py"), str(tmp_path / "shallow.py")]
  runs = expand(zip={"config": configs, "train.learning_rate": [1e-3, 2e-3]}, seeds=[0],
                fixed={"train.num_steps": 5})
  assert [r.name for r in runs] == ["deep_learning_rate0.001_seed0", "shallow_learning_rate0.002_seed0"]
  assert [r.config["model"]["num_layers"] for r in runs] == [6, 1]
  assert sweep.train_command(runs[1])[3:5] == [f"--config={configs[1]}",
                                               "--workdir=/r/shallow_learning_rate0.002_seed0"]
  assert "config" not in runs[0].overrides
  with pytest.raises(SweepError, match="'config' in fixed"):
    expand(fixed={"config": configs[0]})
  with pytest.raises(SweepError, match=r"model.num_layer' in grid of the sweep \(config experiments/configs/tiny"):
    expand(grid={"config": configs, "model.num_layer": [1]})


def test_name_fields():
  runs = expand(zip={"model.d_model": [32, 64], "model.mlp_dim": [128, 256]}, name_fields=["model.d_model"])
  assert [r.name for r in runs] == ["d_model32", "d_model64"]


@pytest.mark.parametrize("spec,match", [
    ({"grid": {"model.num_layer": [1]}},
     r"unknown config field 'model.num_layer' in grid.*Did you mean: model.num_layers"),
    ({"fixed": {"train.lr": 1.0}}, r"'train.lr' in fixed"),
    ({"zip": {"model.d_modle": [1]}}, r"Did you mean: model.d_model"),
    ({"grid": {"model": [1]}}, r"group of fields"),
    ({"grid": {"model.num_layers": "1,2"}}, r"non-empty list"),
    ({"zip": {"model.d_model": [32, 64], "model.num_heads": [2]}}, r"one length"),
    ({"grid": {"model.num_layers": ["four"]}}, r"model.num_layers='four' does not fit"),
    ({"grid": {"seed": [1]}, "seeds": [0, 1]}, r"more than one"),
    ({"grid": {"model.num_layers": [2, 2]}}, r"same config"),
    ({"seeds": []}, r"empty"),
    ({"name_fields": ["model.d_model"]}, r"not swept"),
])
def test_validation_errors_name_the_field(spec, match):
  with pytest.raises(SweepError, match=match):
    expand(**spec)


def test_bad_spec():
  with pytest.raises(SweepError, match="unknown sweep key"):
    Sweep.from_spec({"config": CONFIG, "axes": {}})
  with pytest.raises(SweepError, match="not found"):
    sweep.expand(Sweep.from_spec({"config": "nope.py"}))


def test_train_command_flags():
  [run] = expand(fixed={"train.learning_rate": 1e-3, "data.dataset": "c4/en", "model.tie_embeddings": False,
                        "train.num_steps": 9})
  assert sweep.train_command(run, CONFIG) == [
      "python", "-m", "experiments.train", f"--config={CONFIG}", "--workdir=/r/run",
      "--config.train.learning_rate=0.001", "--config.data.dataset=c4/en", "--config.model.tie_embeddings=False",
      "--config.train.num_steps=9"]


def make_run_dir(workdir, last_step, checkpoint_steps=()):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({}, f)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for step in range(10, last_step + 1, 10):
      f.write(json.dumps({"step": step, "split": "train", "loss": 1.0}) + "\n")
  for s in checkpoint_steps:
    os.makedirs(os.path.join(workdir, "checkpoints", str(s)))


def test_run_status(tmp_path):
  assert sweep.run_status(str(tmp_path / "none"), 30) == "new"
  make_run_dir(tmp_path / "done", 30, [20, 30])
  assert sweep.run_status(str(tmp_path / "done"), 30) == "finished"
  assert sweep.run_status(str(tmp_path / "done"), 40) == "partial"  # num_steps raised: it resumes
  make_run_dir(tmp_path / "half", 20, [20])
  assert sweep.run_status(str(tmp_path / "half"), 30) == "partial"
  make_run_dir(tmp_path / "no_ckpt", 30, [20])  # killed after logging, before the last save
  assert sweep.run_status(str(tmp_path / "no_ckpt"), 30) == "partial"


FAKE_TRAIN = textwrap.dedent('''\
    """Stands in for experiments.train: writes a finished WORKDIR, logs each call."""
    import json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    wd, steps = args["workdir"], int(args["config.train.num_steps"])
    with open(os.environ["FAKE_TRAIN_CALLS"], "a") as f:
      f.write(os.path.basename(wd) + "\\n")
    if os.path.basename(wd) == os.environ.get("FAKE_TRAIN_FAIL"):
      print("boom"); sys.exit(3)
    os.makedirs(os.path.join(wd, "checkpoints", str(steps)), exist_ok=True)
    json.dump({"seed": args.get("config.seed")}, open(os.path.join(wd, "config.json"), "w"))
    open(os.path.join(wd, "metrics.jsonl"), "a").write(json.dumps({"step": steps, "split": "train"}) + "\\n")
    print("trained", os.path.basename(wd))
    ''')


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
  (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))
  calls = tmp_path / "calls.txt"
  monkeypatch.setenv("FAKE_TRAIN_CALLS", str(calls))
  return lambda: calls.read_text().split() if calls.exists() else []


def test_local_sweep_runs_skips_finished_and_resumes(tmp_path, fake_trainer, monkeypatch, capsys):
  s = Sweep.from_spec({"config": CONFIG, "fixed": {"train.num_steps": 4}, "grid": {"model.num_layers": [1, 2]},
                       "seeds": [0, 1]})
  root = str(tmp_path / "root")
  make_run_dir(os.path.join(root, "num_layers1_seed0"), 4, [])  # partial: to be resumed
  os.makedirs(os.path.join(root, "num_layers1_seed1", "checkpoints", "4"))  # finished before
  with open(os.path.join(root, "num_layers1_seed1", "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 4, "split": "eval"}) + "\n")
  monkeypatch.setenv("FAKE_TRAIN_FAIL", "num_layers2_seed0")
  assert sweep.run_sweep(s, root, module="fake_train") == 1  # one failure, the others still ran
  assert fake_trainer() == ["num_layers1_seed0", "num_layers2_seed0", "num_layers2_seed1"]
  out = capsys.readouterr()
  assert "[partial] num_layers1_seed0" in out.out and "[finished] num_layers1_seed1" in out.out
  assert "(resume)" in out.out and "num_layers2_seed0 failed with status 3" in out.err
  assert "trained num_layers2_seed1" in open(os.path.join(root, "num_layers2_seed1", "sweep.log")).read()
  manifest = json.load(open(os.path.join(root, "sweep.json")))
  assert [r["name"] for r in manifest["runs"]][:2] == ["num_layers1_seed0", "num_layers1_seed1"]
  monkeypatch.delenv("FAKE_TRAIN_FAIL")
  assert sweep.run_sweep(s, root, module="fake_train") == 0  # the same command again: only the failed run
  assert fake_trainer()[3:] == ["num_layers2_seed0"]
  assert sweep.run_sweep(s, root, module="fake_train") == 0
  assert len(fake_trainer()) == 4  # everything finished: nothing runs


def test_dry_run_runs_nothing(tmp_path, fake_trainer, capsys):
  root = tmp_path / "root"
  code = sweep.main([f"--sweep={sweep.REPO_ROOT}/experiments/sweeps/example.py", f"--root={root}", "--dry_run",
                     "--train_module=fake_train", "--only=seed1"])
  assert code == 0 and fake_trainer() == [] and not root.exists()
  out = capsys.readouterr().out
  assert "num_layers2_seed1" in out and "num_layers1_seed0" not in out
  assert f"-m fake_train --config={sweep.REPO_ROOT}/{CONFIG} --workdir={root}/num_layers2_seed1" in out


def test_cli_error_for_unknown_field(tmp_path, capsys):
  f = tmp_path / "bad.py"
  f.write_text(f"def get_sweep():\n  return {{'config': '{CONFIG}', 'grid': {{'train.num_step': [1]}}}}\n")
  assert sweep.main([f"--sweep={f}", f"--root={tmp_path}"]) == 2
  assert "Did you mean: train.num_steps" in capsys.readouterr().err


def test_launcher_dry_runs(tmp_path, capsys):
  s = Sweep.from_spec({"config": CONFIG, "grid": {"model.num_layers": [1, 2, 3]}})
  sweep.run_sweep(s, "/shared/root", launcher="slurm", launch_flags="--nodes=2 --gpus_per_node=4", dry_run=True)
  out = capsys.readouterr().out
  assert out.count("sbatch --parsable /shared/root/num_layers2/launch/num_layers2.sbatch") == 1
  assert "#SBATCH --job-name=num_layers3" in out and "--workdir=/shared/root/num_layers3" in out
  assert "exec python -m experiments.train --config=experiments/configs/tiny_clm.py" in out
  sweep.run_sweep(s, "gs://bucket/root", launcher="tpu",
                  launch_flags="--zone=z --tpu_steps=create,sync,install,run,fetch,delete", dry_run=True)
  out = capsys.readouterr().out
  blocks = out.split("# tpu: ")[1:]
  assert [[line[2:].split(":")[0] for line in b.splitlines() if line.startswith("# ")] for b in blocks] == [
      ["create", "sync", "install", "run", "fetch"], ["run", "fetch"], ["run", "fetch", "delete"]]
  assert "[unknown] num_layers1" in out  # a remote root is not checked here
  sweep.run_sweep(s, str(tmp_path), launch_flags="--num_processes=2 --devices_per_process=4 --port=5555",
                  dry_run=True, only="num_layers2")
  out = capsys.readouterr().out
  assert "LM_COORDINATOR_ADDRESS=127.0.0.1:5555 LM_NUM_PROCESSES=2 LM_PROCESS_ID=1 JAX_PLATFORMS=cpu" in out
  log = f"{tmp_path}/num_layers2/launch/process_1.log"
  assert f"--workdir={tmp_path}/num_layers2 --config.model.num_layers=2 > {log}" in out


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(sweep.REPO_ROOT, "experiments/sweeps/[a-z]*.py"))))
def test_repository_sweeps_expand(path):
  module, _ = sweep._load_module(path, "sweep")
  if hasattr(module, "get_ablation"):  # multi-stage: experiments/ablation.py runs it
    from experiments import ablation
    runs = ablation.expand_runs(ablation.load_ablation(path), "/r")
    assert all(r.workdir == f"/r/{r.name}" for r in runs)
    assert all("{root}" not in str(v) for r in runs for v in r.overrides.values())
  else:
    runs = sweep.expand(sweep.load_sweep(path), root="/r")
  assert runs and len({r.name for r in runs}) == len(runs) and all("__" not in r.name for r in runs)


# ---------------------------------------------------------------- IsoFLOP helper

BASE = ModelConfig(vocab_size=512, max_len=128)


def test_isoflop_arithmetic_by_hand():
  shape = isoflop.Shape(d_model=64, num_layers=2, num_heads=2, mlp_dim=256)
  [p] = isoflop.isoflop_points(1e12, [shape], BASE, seq_len=128, batch_size=32)
  # per layer: attention 4*64*64 = 16384 (head_dim 32, no GQA), SwiGLU MLP 3*64*256 = 49152
  assert p.params == 2 * (16384 + 49152) == 131072
  # 6 * (matmul params + logits 64*512) + causal attention 6 * layers * T * heads * head_dim
  assert p.flops_per_token == 6 * (131072 + 64 * 512) + 6 * 2 * 128 * 64 == 1081344
  assert p.tokens == pytest.approx(1e12 / 1081344)
  assert p.steps == 226  # round(924,775.6 / (32 * 128) = 225.77)
  assert p.tokens_trained == 226 * 4096 and p.flops_trained == 226 * 4096 * 1081344
  assert abs(p.flops_trained / 1e12 - 1) < 0.5 / 225  # within half a step of the budget


def test_isoflop_shapes_and_filter():
  shapes = isoflop.shapes_by_aspect([1, 2, 4], aspect=64, head_dim=32)
  assert [(s.d_model, s.num_layers, s.num_heads, s.mlp_dim) for s in shapes] == [
      (64, 1, 2, 256), (128, 2, 4, 512), (256, 4, 8, 1024)]
  assert [s.num_layers for s in isoflop.shapes_by_width([64, 128, 320], aspect=64, head_dim=32)] == [1, 2, 5]
  with pytest.raises(ValueError, match="multiple of head_dim"):
    isoflop.shapes_by_width([100], head_dim=32)
  pts = isoflop.isoflop_points(1e12, shapes, BASE, 128, 32, min_steps=50)
  assert [p.shape.num_layers for p in pts] == [1, 2]  # the 4-layer model would get < 50 steps
  assert pts[0].steps > pts[1].steps


def test_isoflop_sweep_axes():
  shapes = isoflop.shapes_by_aspect([1, 2], aspect=64, head_dim=32)
  axes = isoflop.sweep_axes([1e12, 4e12], shapes, BASE, 128, 32, warmup_fraction=0.1)
  steps = [isoflop.isoflop_points(b, [s], BASE, 128, 32)[0].steps for b in (1e12, 4e12) for s in shapes]
  assert axes["train.num_steps"] == steps and axes["model.d_model"] == [64, 128, 64, 128]
  assert axes["train.warmup_steps"] == [max(1, round(0.1 * s)) for s in steps]
  runs = expand(zip=axes, name_fields=["model.d_model", "train.num_steps"])
  assert [r.name for r in runs][0] == f"d_model64_num_steps{steps[0]}"
