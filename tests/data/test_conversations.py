"""Conversation readers (messages, ShareGPT, Alpaca/WizardLM, prompt/response) and the checks every
conversation passes before it is rendered (issue 12, "Bad input")."""

import pytest

from megatron_ext.data import conversations as C
from megatron_ext.data.conversations import ConversationError, conversation, read_record, validate, validate_prompt


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


@pytest.mark.parametrize("record, layout, messages", [
    ({"messages": [S("be brief"), U("hi"), A("hello")]}, "messages", [S("be brief"), U("hi"), A("hello")]),
    ({"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "q"},
                        {"from": "gpt", "value": "a"}]}, "sharegpt", [S("sys"), U("q"), A("a")]),
    # FastChat's train.py drops a first turn that is not the human's
    ({"conversations": [{"from": "gpt", "value": "greeting"}, {"from": "human", "value": "q"},
                        {"from": "gpt", "value": "a"}], "system": "sys"}, "sharegpt", [S("sys"), U("q"), A("a")]),
    ({"conversations": [{"from": "Human", "value": "q"}, {"from": "chatgpt", "value": "a"}]}, "sharegpt",
     [U("q"), A("a")]),
    ({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}, "alpaca",
     [U("Add the numbers.\n\n2 and 3"), A("5")]),
    ({"instruction": "Say hi.", "input": "", "output": "hi", "system": "sys"}, "alpaca", [S("sys"), U("Say hi."), A("hi")]),
    ({"instruction": "Say hi.", "output": "hi"}, "alpaca", [U("Say hi."), A("hi")]),
    ({"prompt": "p", "response": "r"}, "pair", [U("p"), A("r")]),
    ({"prompt": "p", "completion": "c"}, "pair", [U("p"), A("c")]),
])
def test_readers_and_detection(record, layout, messages):
    assert conversation(record) == (messages, layout, False)
    assert conversation(record, layout) == (messages, layout, False)


def test_trailing_unanswered_user_turn_is_dropped_and_reported():
    record = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                                {"from": "human", "value": "thanks!"}]}
    assert conversation(record) == ([U("q"), A("a")], "sharegpt", True)
    with pytest.raises(ConversationError, match="ends with a user message"):
        validate([U("q"), A("a"), U("thanks!")])


@pytest.mark.parametrize("record, reason, message", [
    ({"messages": [U("only a question")]}, C.NO_ASSISTANT, "no assistant turn"),
    ({"messages": [S("sys")]}, C.NO_ASSISTANT, "no assistant turn"),
    ({"messages": []}, C.NO_ASSISTANT, "no assistant turn"),
    ({"instruction": "no output"}, C.NO_ASSISTANT, "needs 'output'"),
    ({"prompt": "no response"}, C.NO_ASSISTANT, "needs 'response'"),
    ({"messages": [A("first"), U("q")]}, C.OUT_OF_ORDER, "message 0 has role 'assistant' first"),
    ({"messages": [U("a"), U("b"), A("c")]}, C.OUT_OF_ORDER, "message 1 has role 'user' after a user message"),
    ({"messages": [U("a"), A("b"), A("c")]}, C.OUT_OF_ORDER, "message 2 has role 'assistant' after an? assistant"),
    ({"messages": [U("a"), S("late system"), A("c")]}, C.OUT_OF_ORDER, "message 1 has role 'system'"),
    ({"messages": [U("a"), {"role": "tool", "content": "x"}, A("c")]}, C.UNKNOWN_ROLE, "role 'tool'"),
    ({"conversations": [{"from": "narrator", "value": "x"}]}, C.UNKNOWN_ROLE, "from 'narrator'"),
    ({"messages": [U("a"), A("   \n")]}, C.EMPTY_CONTENT, r"message 1 \(assistant\) has empty content"),
    ({"instruction": "", "output": "x"}, C.EMPTY_CONTENT, "message 0 .user. has empty content"),
    ({"messages": [U(["not", "text"]), A("b")]}, C.BAD_CONTENT, "content is list"),
    ({"messages": "hello"}, C.UNRECOGNISED, "'messages' is str"),
    ({"messages": [{"content": "no role"}]}, C.UNRECOGNISED, "message 0 is not an object with 'role'"),
    ({"text": "pretraining text"}, C.UNRECOGNISED, r"no conversation in this record \(keys: \['text'\]\)"),
    ([1, 2], C.NOT_JSON, "not a JSON object"),
])
def test_bad_records_name_the_problem(record, reason, message):
    with pytest.raises(ConversationError, match=message) as err:
        conversation(record)
    assert err.value.reason == reason


def test_forced_layout_names_the_missing_key():
    with pytest.raises(ConversationError, match="no key 'instruction' for --input-format alpaca") as err:
        read_record({"messages": [U("q"), A("a")]}, "alpaca")
    assert err.value.reason == C.UNRECOGNISED
    with pytest.raises(ValueError, match="--input-format 'csv' unknown"):
        read_record({}, "csv")


def test_prompt_checks():
    assert validate_prompt([S("s"), U("q")]) == [S("s"), U("q")]
    assert validate_prompt([U("q"), A("a"), U("q2")]) == [U("q"), A("a"), U("q2")]
    for bad in ([U("q"), A("a")], [], [A("a"), U("q")]):
        with pytest.raises(ConversationError):
            validate_prompt(bad)
