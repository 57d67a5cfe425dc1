"""Scoring: Wilson intervals, pass@k / pass^k, call-level metrics, report files."""
import json

import pytest

from agent import format as fmt
from agent.baselines import OraclePolicy, ScriptedPolicy, WrongPolicy
from agent.episode import episode_seed, run_episode, run_episodes
from agent.scoring import (compare_markdown, pass_at_k, pass_hat_k, summarize, wilson,
                           write_report)
from agent.suite import Task
from agent.tasks import build_suite


@pytest.mark.parametrize("k,n,lo,hi", [
    # Hand-computed: centre = (p + z^2/2n) / (1 + z^2/n),
    # half = z * sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n), z = 1.96.
    (8, 10, 0.4902, 0.9433), (5, 10, 0.2366, 0.7634), (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0), (1, 1, 0.2065, 1.0), (45, 50, 0.7864, 0.9565),
])
def test_wilson_interval(k, n, lo, hi):
  got = wilson(k, n)
  assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_empty():
  assert wilson(0, 0) is None


def test_pass_at_k_and_pass_hat_k():
  assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
  assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
  assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0
  assert pass_hat_k(5, 2, 1) == pytest.approx(0.4)
  assert pass_hat_k(5, 2, 2) == pytest.approx(1 / 10)
  assert pass_hat_k(5, 5, 5) == 1.0 and pass_hat_k(5, 4, 5) == 0.0


class _Flaky:
  """Plays the oracle for episodes with a seed in `good_seeds`, else fails."""

  def __init__(self, good_seeds):
    self.good_seeds = good_seeds
    self.oracle, self.wrong = OraclePolicy(), WrongPolicy()

  def act(self, messages, task, *, seed, **_):
    good = seed in self.good_seeds
    return (self.oracle if good else self.wrong).act(messages, task)


def test_pass_k_from_samples():
  tasks = build_suite("train", 2, families=["single"])
  policy = _Flaky({episode_seed(0, t.id, s) for t in tasks for s in (0, 2)})  # 2 of 4 samples
  results = run_episodes(tasks, policy, samples=4)
  g = summarize(results)["groups"][0]
  assert g["tasks"] == 2 and g["episodes"] == 8 and g["success"]["rate"] == 0.5
  assert g["pass_at_k"][1] == pytest.approx(0.5)
  assert g["pass_at_k"][3] == pytest.approx(1.0)  # 3 of 4 always include a success
  assert g["pass_hat_k"][2] == pytest.approx(1 / 6)
  assert g["pass_hat_k"][3] == 0.0


def _act(name, **arguments):
  return fmt.render_action(name, arguments)


def test_call_level_metrics():
  task = Task(id="c", instruction="12 km in miles?", tools=("convert", "calc"), gold_answer=7.4565,
              gold_calls=({"name": "convert", "arguments": {"value": 12, "from": "km", "to": "mi"}},
                          {"name": "answer", "arguments": {"text": "7.4565 mi"}}))
  irrelevant = Task(id="i", instruction="Play music.", tools=("calc",), check="no_call",
                    gold_calls=({"name": "refuse", "arguments": {"reason": "no"}},))
  runs = [
      run_episode(task, OraclePolicy()),  # all right
      run_episode(task, ScriptedPolicy([  # right tool, float value equal, then an invalid turn
          _act("convert", value=12.0, **{"from": "km", "to": "mi"}), "oops",
          _act("answer", text="7.46")])),
      run_episode(task, ScriptedPolicy([_act("convert", value=12, **{"from": "km", "to": "ft"}),
                                        _act("answer", text="39370")])),  # wrong args
      run_episode(task, ScriptedPolicy([_act("calc", expr="12*0.62"),
                                        _act("answer", text="7.44")])),
      run_episode(task, ScriptedPolicy([_act("refuse", reason="no")])),  # false refusal
      run_episode(irrelevant, ScriptedPolicy([_act("refuse", reason="no")])),
      run_episode(irrelevant, ScriptedPolicy([_act("calc", expr="1"), _act("answer", text="1")])),
  ]
  groups = {g["family"]: g for g in summarize(runs)["groups"]}
  g = groups["all"]
  assert g["episodes"] == 7 and g["success"]["successes"] == 3
  assert g["tool_selection"] == pytest.approx(3 / 5)  # the refusal selected no tool
  assert g["arg_exact"] == pytest.approx(2 / 5)
  assert g["irrelevance_acc"] == pytest.approx(1 / 2)
  assert g["false_refusal"] == pytest.approx(1 / 5)
  assert g["validity"] == pytest.approx(12 / 13)  # 13 turns, "oops" invalid
  assert g["mean_steps"] == pytest.approx((2 + 3 + 2 + 2 + 1 + 1 + 2) / 7)
  assert g["steps_over_optimal"] == pytest.approx((0 + 1 + 0) / 3)
  assert g["reasons"] == {"answered": 5, "refused": 2}


def test_write_report(tmp_path):
  tasks = build_suite("heldout", 3)
  results = run_episodes(tasks, OraclePolicy(), samples=2)
  report = write_report(results, str(tmp_path / "out"), meta={"policy": "oracle"})
  files = sorted(p.name for p in (tmp_path / "out").iterdir())
  assert files == ["report.json", "report.md", "trajectories.jsonl"]
  loaded = json.loads((tmp_path / "out" / "report.json").read_text())
  assert loaded["meta"] == {"policy": "oracle"}
  assert {g["family"] for g in loaded["groups"]} == {t.family for t in tasks} | {"all"}
  assert all(g["success"]["rate"] == 1.0 for g in loaded["groups"])
  assert loaded["groups"][-1]["pass_hat_k"]["2"] == 1.0  # JSON keys are strings
  md = (tmp_path / "out" / "report.md").read_text()
  assert md.startswith("| split | family |") and "| heldout | compose |" in md
  assert "compose/d" in md  # the per-variant table
  lines = (tmp_path / "out" / "trajectories.jsonl").read_text().splitlines()
  assert len(lines) == len(results) == 2 * len(tasks)
  assert json.loads(lines[0])["task"]["id"] == tasks[0].id
  wrong = summarize(run_episodes(tasks, WrongPolicy()))
  table = compare_markdown({"oracle": report, "wrong": wrong})
  assert "| heldout | all | 100% [" in table and "| 0% [" in table
