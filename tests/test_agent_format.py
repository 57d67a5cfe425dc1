"""The strict action parser, canonical rendering and the system prompt."""
import pytest

from agent import format as fmt
from agent.tools import REGISTRY

CONVERT = 'Action: {"name":"convert","arguments":{"value":12,"from":"km","to":"mi"}}'


def test_canonical_text_round_trips():
  text = fmt.render_action("convert", {"to": "mi", "value": 12, "from": "km"})
  assert text == CONVERT  # argument order follows the schema, JSON is compact
  parsed = fmt.parse_action(text)
  assert parsed.ok and parsed.call == fmt.Call("convert", {"value": 12, "from": "km", "to": "mi"})
  assert fmt.render_action(parsed.call.name, parsed.call.arguments) == text
  with_thought = fmt.render_action("calc", {"expr": "1+1"}, thought="add  them\nnow")
  assert with_thought == 'Thought: add them now\nAction: {"name":"calc","arguments":{"expr":"1+1"}}'
  parsed = fmt.parse_action(with_thought)
  assert parsed.thought == "add them now" and parsed.call.name == "calc"


def test_observation_text():
  assert fmt.render_observation({"result": 7.4565, "ok": True}) == '{"ok":true,"result":7.4565}'
  assert fmt.render_observation({"ok": False, "error": "busy"}) == '{"ok":false,"error":"busy"}'
  assert fmt.render_observation({"ok": True, "result": "Ödön"}) == '{"ok":true,"result":"Ödön"}'


def test_lenient_only_about_surrounding_whitespace():
  assert fmt.parse_action("\n  " + CONVERT + "  \n").ok
  assert fmt.parse_action('Action:{"name":"calc","arguments":{"expr":"1"}}').ok


@pytest.mark.parametrize("text,kind,message", [
    ("", "missing_action", "missing 'Action"),
    ("The answer is 4.", "format", "unexpected text before Action"),
    ("Thought: hmm", "missing_action", "missing"),
    ('Action: {"name":"calc","arguments":{"expr":"1"}}\n'
     'Action: {"name":"calc","arguments":{"expr":"2"}}', "multiple_actions", "one Action per turn"),
    ('Action: {"name":"calc","arguments":{"expr":"1"}} {"name":"calc","arguments":{"expr":"2"}}',
     "multiple_actions", "one JSON object"),
    ('Action: {"name":"calc","arguments":{"expr":"1"}}\nThought: late', "format", "first line"),
    ('Action: {"name":"calc","arguments":{"expr":"1"}}\nso 1', "format", "after Action"),
    ('Action: {"name":"calc","arguments":{"expr":"1"}', "bad_json", "bad JSON"),
    ("Action: {'name':'calc','arguments':{}}", "bad_json", "bad JSON"),
    ('Action: {"name":"calc","arguments":{"expr":"1"}} thanks', "bad_json", "extra text"),
    ('Action: {"name":"calc","name":"calc","arguments":{"expr":"1"}}', "bad_json", "duplicate key"),
    ('Action: {"name":"convert","arguments":{"value":NaN,"from":"m","to":"ft"}}', "bad_json",
     "NaN"),
    ('Action: ["calc"]', "bad_action", "action must be"),
    ('Action: {"name":"calc"}', "bad_action", "missing 'arguments'"),
    ('Action: {"arguments":{}}', "bad_action", "missing 'name'"),
    ('Action: {"name":"calc","arguments":{"expr":"1"},"id":3}', "bad_action",
     "unexpected key 'id'"),
    ('Action: {"name":7,"arguments":{}}', "bad_action", "'name' must be a string"),
    ('Action: {"name":"python","arguments":{"code":"1"}}', "unknown_tool", "unknown tool 'python'"),
    ('Action: {"name":"calc","arguments":"1+1"}', "bad_arguments", "'arguments' must be an object"),
    ('Action: {"name":"calc","arguments":{}}', "bad_arguments", "missing argument 'expr'"),
    ('Action: {"name":"calc","arguments":{"expr":"1","mode":"x"}}', "bad_arguments",
     "unexpected argument 'mode'"),
    ('Action: {"name":"calc","arguments":{"expr":12}}', "bad_arguments",
     "argument 'expr' must be string, got integer"),
    ('Action: {"name":"date_add","arguments":{"date":"today","days":"3"}}', "bad_arguments",
     "argument 'days' must be integer, got string"),
    ('Action: {"name":"date_add","arguments":{"date":"today","days":3.5}}', "bad_arguments",
     "argument 'days' must be integer, got number"),
    ('Action: {"name":"answer","arguments":{"text":"4","extra":1}}', "bad_arguments",
     "unexpected argument 'extra'"),
])
def test_malformed_actions_get_precise_errors(text, kind, message):
  parsed = fmt.parse_action(text)
  assert not parsed.ok
  assert parsed.kind == kind, parsed
  assert message in parsed.error, parsed.error


def test_only_allowed_tools_parse():
  allowed = REGISTRY.subset(["calc"])
  assert fmt.parse_action('Action: {"name":"calc","arguments":{"expr":"1"}}', allowed).ok
  parsed = fmt.parse_action(CONVERT, allowed)
  assert parsed.kind == "unknown_tool"
  assert parsed.error == "unknown tool 'convert'; allowed: calc, answer, refuse, clarify"


def test_system_prompt_styles():
  reg = REGISTRY.subset(["lookup", "convert"])
  assert fmt.system_prompt(reg) == "Tools: convert, lookup"
  assert fmt.system_prompt(REGISTRY.subset([])) == "Tools: none"
  assert fmt.system_prompt(reg, "signatures") == (
      "Tools: convert(value,from,to), lookup(entity,attr), answer(text), refuse(reason), "
      "clarify(question)")
  assert fmt.system_prompt(reg, "none") is None
  assert fmt.system_prompt(reg, "names", header="Be brief.") == "Be brief.\nTools: convert, lookup"
  with pytest.raises(ValueError, match="prompt style"):
    fmt.system_prompt(reg, "long")
  msgs = fmt.opening_messages("Hi", reg, fmt.PromptConfig(style="none"))
  assert msgs == [{"role": "user", "content": "Hi"}]
