"""Demonstrations: strict-parser clean, replay to success, only from the train split."""
import json
import subprocess
import sys

import pytest

from agent import demos
from agent import format as fmt
from agent.baselines import ScriptedPolicy
from agent.episode import run_episode
from agent.suite import overlap
from agent.tasks import FAMILIES, build_suite
from agent.tools import REGISTRY


def test_demos_parse_and_replay_to_success(tmp_path):
  path = str(tmp_path / "demos.jsonl")
  results = demos.write_demos(path, num=160, seed=3)
  lines = [json.loads(x) for x in open(path)]
  assert len(lines) == 160 and all(set(x) == {"messages"} for x in lines)
  assert {r.task.family for r in results} == set(FAMILIES)
  for line, result in zip(lines, results):
    messages = line["messages"]
    assert messages == result.messages
    assert [m["role"] for m in messages[:2]] == ["system", "user"]
    turns = [m["content"] for m in messages if m["role"] == "assistant"]
    for text in turns:  # canonical text: parse, re-render, identical
      parsed = fmt.parse_action(text, REGISTRY)
      assert parsed.ok, (text, parsed.error)
      assert fmt.render_action(parsed.call.name, parsed.call.arguments) == text
    # The observations in the file are what the tools really return.
    replay = run_episode(result.task, ScriptedPolicy(turns))
    assert replay.success and replay.messages == messages


def test_demos_never_contain_heldout_instructions():
  episodes = demos.demonstration_episodes(200, seed=0)
  assert overlap([r.task for r in episodes], build_suite("heldout", 100)) == []


def test_heldout_demos_are_refused():
  with pytest.raises(ValueError, match="train split only"):
    demos.demonstration_episodes(5, split="heldout")


def test_cli(tmp_path):
  out = tmp_path / "d.jsonl"
  proc = subprocess.run([sys.executable, "-m", "agent.demos", f"--out={out}", "--split=train",
                         "--num=20", "--seed=1", "--prompt_style=signatures"],
                        capture_output=True, text=True, check=True)
  assert "wrote 20 demonstrations" in proc.stdout
  first = json.loads(out.read_text().splitlines()[0])["messages"][0]["content"]
  assert first.startswith("Tools: ") and "answer(text)" in first
  bad = subprocess.run([sys.executable, "-m", "agent.demos", f"--out={out}", "--split=heldout"],
                       capture_output=True, text=True)
  assert bad.returncode == 2 and "train split only" in bad.stderr


def test_demos_with_thoughts_still_parse():
  for r in demos.demonstration_episodes(24, seed=2, thoughts=True):
    for step in r.trajectory:
      assert step["valid"] and step["thought"] == f"use {step['call']['name']}"
