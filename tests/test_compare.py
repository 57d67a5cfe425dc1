"""compare.py on synthetic WORKDIRs with known metrics (no training)."""
import csv
import json
import math
import os

import numpy as np
import pytest

from experiments import compare
from lm.config import base_config


def write_run(root, name, overrides=None, evals=(3.0, 2.5), num_steps=20, num_params=1000, mfu=(0.1, 0.3, 0.5),
              extra_eval=None, finished=True, flops_per_token=6000.0, tokens_per_step=100):
  """A WORKDIR like lm/train.py writes: config.json, manifest.json, metrics.jsonl."""
  path = os.path.join(root, name)
  os.makedirs(path)
  cfg = base_config().to_dict()
  cfg["train"]["num_steps"] = num_steps
  for dotted, value in (overrides or {}).items():
    node = cfg
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cfg, f)
  with open(os.path.join(path, "manifest.json"), "w") as f:
    json.dump({"git_sha": "abc", "process_count": 1}, f)
  eval_steps = [round(num_steps * (i + 1) / len(evals)) for i in range(len(evals))]
  if not finished:
    eval_steps[-1] = num_steps - 1
  recs = []
  for i, (step, loss) in enumerate(zip(eval_steps, evals)):
    tokens = step * tokens_per_step
    train = {"step": step, "split": "train", "loss": loss + 0.1, "num_params": num_params, "tokens_seen": tokens,
             "flops_seen": tokens * flops_per_token, "wall_s": 10.0 * step, "total_steps": num_steps}
    if mfu:
      train["mfu"] = mfu[i % len(mfu)]
    recs.append(train)
    recs.append({"step": step, "split": "eval", "loss": loss, "tokens_seen": tokens,
                 "flops_seen": tokens * flops_per_token, "wall_s": 10.0 * step + 1, **(extra_eval or {})})
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in recs)
  return path


def args(**kw):
  a = compare.build_parser().parse_args(["unused"])
  for k, v in {"n_boot": 200, **kw}.items():
    setattr(a, k, v)
  return a


def test_summary_values(tmp_path):
  write_run(tmp_path, "a", evals=(3.0, 2.5, 2.7), mfu=(0.1, 0.3, 0.5), num_steps=30, num_params=1234)
  [run], skipped = compare.load_runs([str(tmp_path)])
  assert skipped == []
  s = compare.summarize(run, "eval/loss")
  assert (s["final"], s["best"], s["best_step"]) == (2.7, 2.5, 20)
  assert s["params"] == 1234 and s["tokens"] == 3000 and s["flops"] == 3000 * 6000.0
  assert s["wall_s"] == 301.0  # the largest wall_s logged
  assert s["mfu"] == pytest.approx(0.4)  # median without the first (compile) interval
  hi = compare.summarize(run, "eval/loss", higher_is_better=True)
  assert (hi["best"], hi["best_step"]) == (3.0, 10)
  assert compare.summarize(run, "train/loss")["final"] == pytest.approx(2.8)


def test_no_mfu_logged(tmp_path):
  write_run(tmp_path, "a", mfu=())
  [run], _ = compare.load_runs([str(tmp_path)])
  assert compare.summarize(run, "eval/loss")["mfu"] is None


def test_config_diff_only_differing_fields(tmp_path):
  write_run(tmp_path, "a", {"model.num_layers": 2, "seed": 0})
  write_run(tmp_path, "b", {"model.num_layers": 4, "seed": 0})
  write_run(tmp_path, "c", {"model.num_layers": 4, "seed": 1})
  runs, _ = compare.load_runs([str(tmp_path)])
  fields, rows = compare.config_diff_rows(runs)
  assert fields == ["model.num_layers", "seed"]
  assert [(r["run"], r["model.num_layers"], r["seed"]) for r in rows] == [("a", 2, 0), ("b", 4, 0), ("c", 4, 1)]


def test_config_diff_missing_field(tmp_path):
  write_run(tmp_path, "a")
  path = write_run(tmp_path, "b")
  cfg = json.load(open(os.path.join(path, "config.json")))
  cfg["train"]["new_field"] = 1  # a run made by a newer version
  json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
  runs, _ = compare.load_runs([str(tmp_path)])
  fields, rows = compare.config_diff_rows(runs)
  assert fields == ["train.new_field"] and rows[0]["train.new_field"] == "—"


def test_field_added_since_an_old_run_counts_at_its_default(tmp_path):
  write_run(tmp_path, "new", {"seed": 1})
  old = write_run(tmp_path, "old")
  cfg = json.load(open(os.path.join(old, "config.json")))
  del cfg["train"]["init_from_params"]  # written before the field existed
  json.dump(cfg, open(os.path.join(old, "config.json"), "w"))
  runs, _ = compare.load_runs([str(tmp_path)])
  assert compare.config_diff_rows(runs)[0] == ["seed"]
  assert len(compare.seed_groups(runs, "eval/loss")) == 1


def test_seed_groups_ci_by_hand(tmp_path):
  for seed, loss in enumerate([2.0, 2.2, 2.4]):
    write_run(tmp_path, f"l2_s{seed}", {"model.num_layers": 2, "seed": seed, "train.log_every": 5 + seed},
              evals=(3.0, loss))
  for seed, loss in enumerate([1.5, 1.9]):
    write_run(tmp_path, f"l4_s{seed}", {"model.num_layers": 4, "seed": seed}, evals=(3.0, loss))
  write_run(tmp_path, "other_lr", {"model.num_layers": 4, "train.learning_rate": 1e-3}, evals=(3.0, 1.0))
  runs, _ = compare.load_runs([str(tmp_path)])
  groups = {g.label: g for g in compare.seed_groups(runs, "eval/loss")}
  assert set(groups) == {"num_layers=2, learning_rate=0.003", "num_layers=4, learning_rate=0.003",
                         "num_layers=4, learning_rate=0.001"}
  g = groups["num_layers=2, learning_rate=0.003"].stats  # log_every differs: still one group
  assert g.n == 3 and g.mean == pytest.approx(2.2) and g.std == pytest.approx(0.2)
  # t_{0.975, 2} = 4.302653 (tables); half width = t * s / sqrt(n)
  assert g.half_width == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-5)
  assert (g.low, g.high) == pytest.approx((2.2 - 0.496828, 2.2 + 0.496828), abs=1e-5)
  g = groups["num_layers=4, learning_rate=0.003"].stats
  sd = math.sqrt(((1.5 - 1.7) ** 2 + (1.9 - 1.7) ** 2) / 1)
  assert g.n == 2 and g.std == pytest.approx(sd) and g.half_width == pytest.approx(12.706205 * sd / math.sqrt(2))
  assert math.isnan(groups["num_layers=4, learning_rate=0.001"].stats.std)


def test_bad_and_partial_dirs_skipped(tmp_path):
  write_run(tmp_path, "good")
  write_run(tmp_path, "partial", finished=False)
  os.makedirs(tmp_path / "no_metrics")
  json.dump(base_config().to_dict(), open(tmp_path / "no_metrics" / "config.json", "w"))
  os.makedirs(tmp_path / "corrupt")
  (tmp_path / "corrupt" / "config.json").write_text("{not json")
  (tmp_path / "corrupt" / "metrics.jsonl").write_text("")
  os.makedirs(tmp_path / "failed_to_start")
  (tmp_path / "failed_to_start" / "sweep.log").write_text("error: ...")
  os.makedirs(tmp_path / "report")  # not a run: ignored
  torn = write_run(tmp_path, "torn")
  with open(os.path.join(torn, "metrics.jsonl"), "a") as f:
    f.write('{"step": 21, "spl')  # killed mid-write
  runs, skipped = compare.load_runs([str(tmp_path)])
  assert sorted(r.name for r in runs) == ["good", "torn"]
  why = dict(skipped)
  assert set(why) == {"partial", "no_metrics", "corrupt", "failed_to_start"}
  assert "unfinished: step 19 of 20" in why["partial"] and "metrics.jsonl" in why["no_metrics"]
  assert "config.json" in why["corrupt"] and "config.json" in why["failed_to_start"]
  assert next(r for r in runs if r.name == "torn").warnings
  runs, skipped = compare.load_runs([str(tmp_path)], include_partial=True)
  assert "partial" in [r.name for r in runs]
  _, skipped = compare.load_runs([str(tmp_path / "missing")])
  assert skipped == [(str(tmp_path / "missing"), "not a directory")]


def test_nested_roots_and_single_run_dir(tmp_path):
  write_run(tmp_path / "sweep1", "a")
  write_run(tmp_path / "sweep2" / "inner", "a")
  runs, _ = compare.load_runs([str(tmp_path)])
  assert sorted(r.name for r in runs) == ["sweep1/a", "sweep2/inner/a"]
  runs, _ = compare.load_runs([str(tmp_path / "sweep1" / "a")])
  assert [r.name for r in runs] == ["a"]


def test_power_law_fit_and_report_files(tmp_path):
  ns = [1e4, 3e4, 1e5, 3e5, 1e6, 3e6]
  rng = np.random.default_rng(0)
  for n in ns:
    loss = 1.2 + 30 * n ** -0.35 + rng.normal(0, 0.002)
    write_run(tmp_path / "runs", f"n{int(n)}", {"model.d_model": int(n) // 100}, evals=(5.0, loss), num_params=int(n),
              extra_eval={"bits_per_byte": loss, "entropy_floor_bpb": 1.2, "eval_floor_bpb": 1.25})
  out = tmp_path / "report"
  code = compare.main([str(tmp_path / "runs"), "--metric=eval/bits_per_byte", f"--out={out}", "--n_boot=200",
                       "--by=model.d_model"])
  assert code == 0
  fits = json.load(open(out / "fits.json"))["power_law"]
  assert fits["E"] == pytest.approx(1.2, abs=0.03) and fits["alpha"] == pytest.approx(0.35, abs=0.05)
  assert fits["ci95"]["E"][0] <= 1.2 <= fits["ci95"]["E"][1] and fits["floor_inside_ci"] is True
  for name in ("report.md", "runs.csv", "seeds.csv", "config_diff.csv", "scaling_fit.png",
               "eval_bits_per_byte_vs_step.png", "eval_bits_per_byte_vs_tokens.png", "eval_bits_per_byte_vs_flops.png"):
    assert (out / name).exists(), name
  assert (out / "scaling_fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  rows = list(csv.DictReader(open(out / "runs.csv")))
  assert [int(r["params"]) for r in rows] == [int(n) for n in ns]  # sorted by --by
  md = (out / "report.md").read_text()
  assert "Entropy floor 1.2000 bits/byte is inside E's 95% CI" in md and "## Config diff" in md
  assert "eval documents, 1.2500 bits/byte, is OUTSIDE E's 95% CI" in md and fits["eval_floor_inside_ci"] is False


def test_isoflop_report(tmp_path):
  e, a, alpha, b, beta = 1.7, 400.0, 0.34, 410.0, 0.28
  for c in (1e13, 1e14, 1e15):
    n_star = (alpha * a / (beta * b)) ** (1 / (alpha + beta)) * (c / 6) ** (beta / (alpha + beta))
    for n in np.geomspace(n_star / 8, n_star * 8, 5):
      d = c / (6 * n)
      steps = 20
      loss = e + a * n ** -alpha + b * d ** -beta
      write_run(tmp_path, f"c{c:.0e}_n{int(n)}", {"model.d_model": int(n)}, evals=(9.0, loss), num_steps=steps,
                num_params=int(n), flops_per_token=6 * int(n), tokens_per_step=d / steps)
  md, fits = compare.report(*compare.load_runs([str(tmp_path)]), args(), str(tmp_path / "out"))
  co = fits["compute_optimal"]
  assert len(co["budgets"]) == 3
  assert co["a"] == pytest.approx(beta / (alpha + beta), abs=0.03)
  assert co["ci95"]["a"][0] <= co["a"] <= co["ci95"]["a"][1]
  assert "N_opt ∝ C^a" in md and (tmp_path / "out" / "isoflop.png").exists()


def test_errors_are_reported(tmp_path, capsys):
  write_run(tmp_path, "a")
  assert compare.main([str(tmp_path), "--by=model.num_layer"]) == 2
  assert "did you mean: model.num_layers" in capsys.readouterr().err.lower()
  assert compare.main([str(tmp_path), "--metric=loss"]) == 2
  assert compare.main([str(tmp_path / "nothing")]) == 1
  # too few sizes for a fit: the report says so instead of failing
  md, fits = compare.report(*compare.load_runs([str(tmp_path)]), args(fit="params"), None)
  assert "Not fitted" in md and fits == {}
