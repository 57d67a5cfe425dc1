"""The LM policy: constrained decoding, the fake backend, context limits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agent import format as fmt
from agent.baselines import NoToolsPolicy, OraclePolicy
from agent.constrained import Grammar, GrammarCache
from agent.demos import demonstration_episodes
from agent.episode import Limits, run_episodes
from agent.lm_backend import FakeBackend, JaxBackend
from agent.policy import LMPolicy
from agent.tasks import FAMILIES, build_suite
from agent.tools import REGISTRY
from lm import chat
from lm.config import ModelConfig
from lm.data.tokenizer import train_tokenizer
from lm.models import make_model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  texts = ["\n".join(m["content"] for m in r.messages) for r in demonstration_episodes(40)]
  return train_tokenizer(texts, 600, str(tmp_path_factory.mktemp("tok") / "tok.model"))


@pytest.fixture(scope="module")
def untrained(tokenizer):
  cfg = ModelConfig(vocab_size=640, d_model=32, num_layers=1, num_heads=2, mlp_dim=64, max_len=256)
  params = make_model(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  return JaxBackend(cfg, params, tokenizer)


def _accepts(grammar: Grammar, text: str) -> bool:
  state = grammar.start
  for ch in text:
    state = grammar.step(state, ch)
    if state is None:
      return False
  return state == ("end",)


def test_grammar_accepts_every_gold_action(tokenizer):
  cache = GrammarCache(tokenizer, chat.stop_ids(tokenizer))
  for split in ("train", "heldout"):
    tasks = build_suite(split, 6)
    for r in run_episodes(tasks, OraclePolicy()):
      for step in r.trajectory:
        g = cache.constraint(REGISTRY.subset(r.task.tools)).grammar
        assert _accepts(g, step["text"]), step["text"]


def test_grammar_rejects_what_would_not_parse(tokenizer):
  g = GrammarCache(tokenizer, chat.stop_ids(tokenizer)).constraint(REGISTRY.subset(["transfer"])).grammar
  assert _accepts(g, 'Action: {"name":"transfer","arguments":{"from":"a","to":"b","amount":5}}')
  for bad in ('Action: {"name":"calc","arguments":{"expr":"1"}}',  # not allowed here
              'Action: {"name":"transfer","arguments":{"from":"a","to":"b","amount":0}}',
              'Action: {"name":"transfer","arguments":{"from":"a","to":"b","amount":5.5}}',
              'Action: {"name":"transfer","arguments":{"from":"","to":"b","amount":5}}',
              'Action: {"name":"answer","arguments":{"text":"a\\"b"}}'):
    assert not _accepts(g, bad), bad


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_constrained_decoding_parses_from_an_untrained_model(untrained, temperature):
  tasks = build_suite("heldout", 2)
  for policy in (LMPolicy(untrained, constrained=True, temperature=temperature),
                 NoToolsPolicy(LMPolicy(untrained, constrained=True, temperature=temperature))):
    results = run_episodes(tasks, policy, Limits(max_new_tokens=64))
    steps = [s for r in results for s in r.trajectory]
    assert steps and all(s["valid"] for s in steps), [s for s in steps if not s["valid"]][:2]
    assert all(r.reason != "invalid_limit" for r in results)


def test_unconstrained_untrained_model_rarely_parses(untrained):
  results = run_episodes(build_suite("heldout", 1), LMPolicy(untrained), Limits(max_new_tokens=32))
  assert sum(s["valid"] for r in results for s in r.trajectory) == 0


def test_sampling_is_per_episode_not_per_batch(untrained):
  task = build_suite("heldout", 1, families=["single"])[0]
  msgs = fmt.opening_messages(task.instruction, REGISTRY.subset(task.tools))
  pol = LMPolicy(untrained, temperature=1.0)
  kw = dict(max_new_tokens=12, tools=REGISTRY.subset(task.tools))
  alone = pol.act_batch([msgs], [task], seeds=[7], **kw)
  together = pol.act_batch([msgs, msgs, msgs], [task] * 3, seeds=[7, 8, 9], **kw)
  assert together[0] == alone[0]
  assert len(set(together)) > 1


def test_fake_backend_drives_episodes(tokenizer):
  answer = 'Action: {"name":"answer","arguments":{"text":"42"}}'
  backend = FakeBackend(tokenizer, lambda prompt: answer)
  results = run_episodes(build_suite("heldout", 2), LMPolicy(backend))
  assert all(r.reason == "answered" and r.steps == 1 for r in results)
  assert backend.calls == 1  # one lockstep batch


def test_constraints_repair_garbage_from_a_fake_backend(tokenizer):
  backend = FakeBackend(tokenizer, lambda prompt: "I think the answer is 42")
  results = run_episodes(build_suite("heldout", 1), LMPolicy(backend, constrained=True),
                         Limits(max_new_tokens=80))
  assert all(s["valid"] for r in results for s in r.trajectory)


def test_fits_ends_long_episodes_with_context_limit(tokenizer):
  loop = 'Action: {"name":"calc","arguments":{"expr":"1+1"}}'
  backend = FakeBackend(tokenizer, lambda prompt: loop, max_len=160)
  tasks = build_suite("heldout", 1, families=["single"])
  results = run_episodes(tasks, LMPolicy(backend, max_new_tokens=64),
                         Limits(max_identical=100, max_steps=100))
  assert [r.reason for r in results] == ["context_limit"]


def test_encoder_decoder_model_drives_constrained_episodes(tokenizer):
  """An encoder-decoder (sft_seq2seq) run acts through DecodeBackend: prompt in, turn out."""
  from agent.lm_backend import DecodeBackend
  cfg = ModelConfig(family="encoder_decoder", vocab_size=640, d_model=32, num_layers=1,
                    num_heads=2, mlp_dim=64, max_len=256, position="relative")
  z = jnp.zeros((1, 8), jnp.int32)
  params = make_model(cfg).init(jax.random.key(0), z, z)["params"]
  with pytest.raises(ValueError, match="model.family='encoder_decoder'"):
    JaxBackend(cfg, params, tokenizer)
  policy = LMPolicy(DecodeBackend(cfg, params, tokenizer), constrained=True)
  results = run_episodes(build_suite("heldout", 1)[:2], policy, Limits(max_new_tokens=48))
  steps = [s for r in results for s in r.trajectory]
  assert steps and all(s["valid"] for s in steps)
