"""The episode loop: every limit and termination reason, faults, injections, batching."""
import json

import pytest

from agent import format as fmt
from agent.baselines import (NoToolsPolicy, ObeyInjectionPolicy, OraclePolicy, ScriptedPolicy)
from agent.episode import REASONS, Episode, EpisodeResult, Limits, run_episode, run_episodes
from agent.suite import Task
from agent.tasks import build_suite


def act(name, **arguments):
  return fmt.render_action(name, arguments)


TASK = Task(id="t1", instruction="What is 2+2?", tools=("calc",), gold_answer=4,
            gold_calls=({"name": "calc", "arguments": {"expr": "2+2"}},
                        {"name": "answer", "arguments": {"text": "4"}}))


@pytest.mark.parametrize("name,arguments,reason", [
    ("answer", {"text": "4"}, "answered"),
    ("refuse", {"reason": "cannot"}, "refused"),
    ("clarify", {"question": "which?"}, "clarified"),
])
def test_terminal_actions_end_the_episode(name, arguments, reason):
  r = run_episode(TASK, ScriptedPolicy([act(name, **arguments)]))
  assert (r.reason, r.steps, r.terminal) == (reason, 1, {"name": name, "arguments": arguments})
  assert r.success == (reason == "answered")
  assert r.messages[-1] == {"role": "assistant", "content": act(name, **arguments)}


def test_oracle_episode_text():
  r = run_episode(TASK, OraclePolicy())
  assert r.success and r.reason == "answered" and r.steps == 2
  assert r.messages == [
      {"role": "system", "content": "Tools: calc"},
      {"role": "user", "content": "What is 2+2?"},
      {"role": "assistant", "content": 'Action: {"name":"calc","arguments":{"expr":"2+2"}}'},
      {"role": "tool", "content": '{"ok":true,"result":4}'},
      {"role": "assistant", "content": 'Action: {"name":"answer","arguments":{"text":"4"}}'},
  ]
  assert r.calls == [{"name": "calc", "arguments": {"expr": "2+2"}}]


def test_max_steps():
  texts = [act("calc", expr=f"{i}+1") for i in range(10)]
  r = run_episode(TASK, ScriptedPolicy(texts), Limits(max_steps=3))
  assert (r.reason, r.steps, len(r.calls), r.success) == ("max_steps", 3, 3, False)


def test_invalid_limit_feeds_errors_back():
  policy = ScriptedPolicy(["The answer is 4.", 'Action: {"name":"calc"', act("answer", text="4")])
  r = run_episode(TASK, policy, Limits(max_invalid=2))
  assert (r.reason, r.steps, r.invalid, r.success) == ("invalid_limit", 2, 2, False)
  assert [m["role"] for m in r.messages[2:]] == ["assistant", "tool", "assistant", "tool"]
  assert json.loads(r.messages[3]["content"])["ok"] is False
  assert "unexpected text" in r.messages[3]["content"]
  assert r.trajectory[1]["kind"] == "bad_json"
  # With a higher limit the same policy recovers and answers.
  r = run_episode(TASK, policy, Limits(max_invalid=3))
  assert (r.reason, r.invalid, r.success) == ("answered", 2, True)


def test_schema_errors_count_as_invalid():
  policy = ScriptedPolicy([act("calc", expression="2+2"), act("convert", value=1)])
  r = run_episode(TASK, policy, Limits(max_invalid=2))
  assert r.reason == "invalid_limit" and not r.calls
  assert [s["kind"] for s in r.trajectory] == ["bad_arguments", "unknown_tool"]


def test_tool_errors_are_observations_not_invalid_actions():
  policy = ScriptedPolicy([act("calc", expr="1/0"), act("calc", expr="2+2"),
                           act("answer", text="4")])
  r = run_episode(TASK, policy)
  assert r.invalid == 0 and r.success
  assert r.messages[3]["content"] == '{"ok":false,"error":"division by zero"}'


def test_loop_detection_on_identical_call_and_result():
  policy = ScriptedPolicy([act("calc", expr="2+2")])  # repeats forever
  r = run_episode(TASK, policy, Limits(max_identical=2))
  assert (r.reason, r.steps) == ("loop", 2)
  r = run_episode(TASK, policy, Limits(max_identical=3))
  assert (r.reason, r.steps) == ("loop", 3)
  reordered = ScriptedPolicy([
      'Action: {"name":"convert","arguments":{"value":1,"from":"m","to":"ft"}}',
      'Action: {"arguments":{"to":"ft","from":"m","value":1},"name":"convert"}'])
  r = run_episode(Task(id="c", instruction="x", tools=("convert",), gold_answer=1), reordered)
  assert (r.reason, r.steps) == ("loop", 2)  # the same call, whatever the key order


def test_retry_after_a_transient_fault_is_not_a_loop():
  task = Task(id="f", instruction="What is 2+2?", tools=("calc",), gold_answer=4,
              faults=({"tool": "calc", "error": "busy, try again", "times": 1},))
  policy = ScriptedPolicy([act("calc", expr="2+2"), act("calc", expr="2+2"),
                           act("answer", text="4")])
  r = run_episode(task, policy)
  assert r.success and r.reason == "answered"
  assert [s["observation"] for s in r.trajectory[:2]] == [
      {"ok": False, "error": "busy, try again"}, {"ok": True, "result": 4}]
  assert r.trajectory[0]["event"] == "fault"


def test_permanent_fault():
  task = Task(id="f", instruction="x", tools=("calc",), gold_answer=4,
              faults=({"tool": "calc", "error": "down", "times": -1},))
  texts = [act("calc", expr=f"{i}") for i in range(5)]
  r = run_episode(task, ScriptedPolicy(texts), Limits(max_steps=4))
  assert all(s["observation"] == {"ok": False, "error": "down"} for s in r.trajectory)


def test_context_limit_by_character_budget():
  texts = [act("calc", expr=f"{i}+1") for i in range(50)]
  r = run_episode(TASK, ScriptedPolicy(texts), Limits(max_steps=50, max_context_chars=300))
  assert r.reason == "context_limit"
  assert sum(len(m["content"]) for m in r.messages) > 300


class _Fits(ScriptedPolicy):
  def __init__(self, texts, max_messages):
    super().__init__(texts)
    self.max_messages = max_messages

  def fits(self, messages):
    return len(messages) < self.max_messages


def test_context_limit_by_policy_hook():
  texts = [act("calc", expr=f"{i}+1") for i in range(50)]
  r = run_episode(TASK, _Fits(texts, 6), Limits(max_steps=50, max_context_chars=10))
  assert r.reason == "context_limit" and len(r.messages) == 6


def test_every_reason_is_reachable():
  seen = set()
  cases = [
      (ScriptedPolicy([act("answer", text="4")]), Limits()),
      (ScriptedPolicy([act("refuse", reason="no")]), Limits()),
      (ScriptedPolicy([act("clarify", question="?")]), Limits()),
      (ScriptedPolicy([act("calc", expr=f"{i}") for i in range(9)]), Limits(max_steps=2)),
      (ScriptedPolicy(["?"]), Limits()),
      (ScriptedPolicy([act("calc", expr="1")]), Limits()),
      (ScriptedPolicy([act("calc", expr="1")]), Limits(max_context_chars=5)),
  ]
  for policy, limits in cases:
    seen.add(run_episode(TASK, policy, limits).reason)
  assert seen == set(REASONS)


class _Recorder(ScriptedPolicy):
  def __init__(self, texts):
    super().__init__(texts)
    self.kwargs = []

  def act(self, messages, task, **kw):
    self.kwargs.append(kw)
    messages.append({"role": "user", "content": "mutated"})  # must not leak into the episode
    return super().act(messages[:-1], task)


def test_policy_gets_max_new_tokens_and_a_stable_episode_seed():
  p = _Recorder([act("calc", expr="2+2"), act("answer", text="4")])
  r = run_episode(TASK, p, Limits(max_new_tokens=17), seed=5, sample=1)
  assert [k["max_new_tokens"] for k in p.kwargs] == [17, 17]
  assert p.kwargs[0]["tools"].names == ("calc", "answer", "refuse", "clarify")
  assert p.kwargs[0]["seed"] == p.kwargs[1]["seed"] == r.seed
  assert r.success and all(m["content"] != "mutated" for m in r.messages)
  other = run_episode(TASK, OraclePolicy(), seed=5, sample=2)
  assert other.seed != r.seed
  assert run_episode(TASK, OraclePolicy(), seed=5, sample=1).seed == r.seed


def test_step_after_the_end_is_an_error():
  ep = Episode(TASK)
  ep.step(act("answer", text="4"))
  with pytest.raises(RuntimeError):
    ep.step(act("answer", text="4"))


def test_injection_leaves_ledger_unchanged_unless_obeyed():
  for task in build_suite("train", 10, families=["injection"]) + build_suite(
      "heldout", 10, families=["injection"]):
    good = run_episode(task, OraclePolicy())
    assert good.success and good.ledger_after == good.ledger_before
    injected = [s for s in good.trajectory if s["event"] == "injection"]
    assert len(injected) == 1 and task.injection["text"] in injected[0]["observation"]["result"]
    bad = run_episode(task, ObeyInjectionPolicy())
    assert bad.reason == "answered" and not bad.success
    assert bad.ledger_after != bad.ledger_before
    assert {"name": "transfer", "arguments": task.injection["call"]["arguments"]} in bad.calls


def test_no_tools_baseline_offers_no_tools():
  r = run_episode(TASK, NoToolsPolicy(OraclePolicy()))
  assert r.messages[0] == {"role": "system", "content": "Tools: none"}
  assert r.trajectory[0]["kind"] == "unknown_tool"  # calc is not offered
  direct = run_episode(TASK, NoToolsPolicy(ScriptedPolicy([act("answer", text="4")])))
  assert direct.success


def test_results_are_json_serialisable_and_round_trip():
  tasks = build_suite("heldout", 2)
  for r in run_episodes(tasks, OraclePolicy()):
    d = json.loads(json.dumps(r.to_json()))
    assert d["chars"] == r.chars
    assert EpisodeResult.from_json(d) == r


class _Batched(OraclePolicy):
  def __init__(self):
    super().__init__()
    self.batch_sizes = []

  def act_batch(self, messages, tasks, *, max_new_tokens, seeds, tools):
    self.batch_sizes.append(len(messages))
    return [self.act(m, t, max_new_tokens=max_new_tokens, seed=s, tools=r)
            for m, t, s, r in zip(messages, tasks, seeds, tools)]


def test_batched_policy_gives_the_same_episodes():
  tasks = build_suite("train", 3)
  seq = run_episodes(tasks, OraclePolicy(), samples=2, seed=3)
  policy = _Batched()
  bat = run_episodes(tasks, policy, samples=2, seed=3)
  assert [r.to_json() for r in seq] == [r.to_json() for r in bat]
  assert policy.batch_sizes[0] == 2 * len(tasks)
  assert policy.batch_sizes == sorted(policy.batch_sizes, reverse=True)
