"""Task suites: gold 100% / wrong 0% everywhere, split hygiene, outcome checks, custom suites."""
import collections
import json
import re

import pytest

from agent import outcome, world
from agent.baselines import GuessPolicy, NoToolsPolicy, OraclePolicy, WrongPolicy
from agent.episode import run_episodes
from agent.suite import SuiteError, Task, check_no_overlap, load_suite, overlap, save_suite
from agent.tasks import FAMILIES, SPECS, build_suite
from agent.templates import REL, TEMPLATES

N = 40  # tasks per family and split


@pytest.fixture(scope="module")
def suites():
  return {split: build_suite(split, N, seed=0) for split in ("train", "heldout")}


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_gold_scores_100_and_wrong_scores_0_on_every_family(suites, split):
  tasks = suites[split]
  for policy, want in ((OraclePolicy(), True), (WrongPolicy(), False)):
    results = run_episodes(tasks, policy)
    by_family = collections.defaultdict(set)
    for r in results:
      by_family[r.task.family].add(r.success)
    assert by_family == {f: {want} for f in FAMILIES}, type(policy).__name__


def test_no_tools_baseline_fails_tool_families(suites):
  results = run_episodes(suites["heldout"], NoToolsPolicy(GuessPolicy()))
  rates = collections.defaultdict(list)
  for r in results:
    rates[r.task.family].append(r.success)
  for family, wins in rates.items():
    assert all(wins) if family in ("irrelevance", "ambiguity") else not any(wins), family


def test_suites_are_deterministic_and_seeded(suites):
  again = build_suite("train", N, seed=0)
  assert [t.to_json() for t in again] == [t.to_json() for t in suites["train"]]
  other = build_suite("train", N, seed=1)
  assert [t.instruction for t in other] != [t.instruction for t in again]


def test_no_heldout_instruction_appears_in_training_data(suites):
  train = build_suite("train", 400, seed=0) + build_suite("train", 400, seed=1)
  heldout = build_suite("heldout", 200, seed=0)
  assert overlap(train, heldout) == []
  check_no_overlap(train, heldout)
  with pytest.raises(SuiteError, match="occur in training"):
    check_no_overlap(train, heldout + [train[0]])


def test_heldout_templates_entities_ranges_and_depths_are_new(suites):
  for key, by_split in TEMPLATES.items():
    assert not set(by_split["train"]) & set(by_split["heldout"]), key
  for rel in REL.values():
    assert rel["train"] != rel["heldout"]
  train, held = suites["train"], suites["heldout"]
  assert not {t.template for t in train} & {t.template for t in held}
  heldout_names = {n for n, s in world.SPLIT.items() if s == "heldout"}
  for t in train:  # no held-out entity in a training instruction, ledger or gold call
    text = json.dumps(t.to_json())
    assert not any(re.search(rf"\b{n}\b", text) for n in heldout_names), t.id
  assert max(SPECS["train"].values) < min(SPECS["heldout"].values)
  assert max(SPECS["train"].depths) < max(SPECS["heldout"].depths)
  depths = {t.variant for t in held if t.family == "compose"}
  assert "d4" in depths and "d4" not in {t.variant for t in train if t.family == "compose"}


def test_tasks_are_short_and_well_formed(suites):
  for tasks in suites.values():
    for t in tasks:
      assert len(t.instruction) <= 80, t.instruction
      assert t.optimal == len(t.gold_calls)
      assert t.gold_calls[-1]["name"] in ("answer", "refuse", "clarify")
  results = run_episodes(suites["train"], OraclePolicy())
  assert max(r.chars for r in results) <= 600


@pytest.mark.parametrize("text,gold,ok", [
    ("7.4565 mi", 7.4565, True), ("about 7.46 miles", 7.4565, True), ("7.457", 7.4565, True),
    ("7.5", 7.4565, False), ("7", 7.4565, False), ("7.45", 7.4565, False),
    ("48,210 people", 48210, True), ("48210.0", 48210, True), ("48211", 48210, False),
    ("It is -12.", -12, True), ("no idea", 3, False), ("1 or 2", 1, False),
    ("2032-03-04", "2032-03-04", True), ("On 2032-03-05.", "2032-03-04", False),
    ("The mayor is Orvo.", "Orvo", True), ("orvo", "Orvo", True), ("Orvonia", "Orvo", False),
])
def test_answer_normalisation(text, gold, ok):
  assert outcome.answer_matches(text, gold) is ok


def test_number_answers_ignore_dates():
  assert outcome.answer_matches("604 days until 2033-12-30", 604)


def test_custom_suite_round_trip_and_inference(tmp_path):
  path = tmp_path / "suite.jsonl"
  lines = [
      {"instruction": "What is 6*7?", "tools": ["calc", "answer"], "gold_answer": 42},
      {"id": "pay", "instruction": "Pay Bo 5 from Al.", "tools": ["transfer"],
       "ledger": {"Al": 10, "Bo": 0},
       "gold_calls": [{"name": "transfer", "arguments": {"from": "Al", "to": "Bo", "amount": 5}},
                      {"name": "answer", "arguments": {"text": "Done."}}]},
      {"instruction": "Convert 5.", "tools": ["convert"],
       "gold_calls": [{"name": "clarify", "arguments": {"question": "Which units?"}}]},
  ]
  path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
  tasks = load_suite(str(path))
  assert [t.check for t in tasks] == ["answer", "ledger", "clarify"]
  assert [t.id for t in tasks] == ["1", "pay", "3"]
  assert tasks[0].tools == ("calc",)
  assert all(r.success for r in run_episodes(tasks, OraclePolicy()))
  assert not any(r.success for r in run_episodes(tasks, WrongPolicy()))
  save_suite(tasks, str(tmp_path / "again.jsonl"))
  assert load_suite(str(tmp_path / "again.jsonl")) == tasks
  builtin = build_suite("heldout", 2)
  save_suite(builtin, str(tmp_path / "builtin.jsonl"))
  assert load_suite(str(tmp_path / "builtin.jsonl")) == builtin


@pytest.mark.parametrize("line,message", [
    ("not json", "not JSON"),
    ('{"tools": ["calc"], "gold_answer": 1}', "'instruction' and 'tools' are required"),
    ('{"instruction": "x", "tools": ["calc"]}', "give 'gold_answer' or 'gold_calls'"),
    ('{"instruction": "x", "tools": ["shell"], "gold_answer": 1}', "unknown tools ['shell']"),
    ('{"instruction": "x", "tools": "calc", "gold_answer": 1}', "must be a list"),
    ('{"instruction": "x", "tools": [], "gold_answer": 1, "colour": 1}', "unknown fields"),
    ('{"instruction": "x", "tools": [], "gold_answer": 1, "today": "soon"}', "'today'"),
    ('{"instruction": "x", "tools": ["calc"], "gold_calls": [{"name": "calc", '
     '"arguments": {"expr": 1}}]}', "gold_calls[0]: argument 'expr' must be string"),
    ('{"instruction": "x", "tools": ["calc"], "gold_calls": [{"name": "calc", '
     '"arguments": {"expr": "1"}}], "gold_answer": 1}', "last gold call"),
])
def test_custom_suite_errors_name_the_line_and_field(tmp_path, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_text(line + "\n")
  with pytest.raises(SuiteError) as e:
    load_suite(str(path))
  assert f"{path}:1" in str(e.value) and message in str(e.value), str(e.value)


def test_build_suite_rejects_unknown_knobs():
  with pytest.raises(ValueError, match="split"):
    build_suite("test", 1)
  with pytest.raises(ValueError, match="unknown families"):
    build_suite("train", 1, families=["chess"])


def test_ledger_check_replays_gold_transfers():
  task = Task(id="l", instruction="x", tools=("transfer",), check="ledger",
              ledger={"A": 10, "B": 0},
              gold_calls=({"name": "transfer", "arguments": {"from": "A", "to": "B", "amount": 4}},
                          {"name": "answer", "arguments": {"text": "Done."}}))
  assert outcome.expected_ledger(task) == {"A": 6, "B": 4}
  term = {"name": "answer", "arguments": {"text": "Done."}}
  assert outcome.check(task, "answered", term, [], {"A": 10, "B": 0}, {"A": 6, "B": 4})
  assert not outcome.check(task, "answered", term, [], {"A": 10, "B": 0}, {"A": 10, "B": 0})
  assert not outcome.check(task, "max_steps", None, [], {"A": 10, "B": 0}, {"A": 6, "B": 4})
