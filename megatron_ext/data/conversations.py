"""Conversation records -> messages, and the checks a conversation must pass before a chat format renders it.

Every reader turns one JSON record into the common form, a list of ``{"role": "system" | "user" |
"assistant", "content": str}``. The record layouts the seed recipes' data come in:

- ``messages``: ``{"messages": [{"role": ..., "content": ...}, ...]}`` (the OpenAI / Hugging Face chat form).
- ShareGPT: ``{"conversations": [{"from": "human" | "gpt" | "system", "value": ...}, ...]}`` (ShareGPT Vicuna
  and WizardLM evol_instruct V2, AmberChat's data). As FastChat's training code does
  (fastchat/train/train.py, ``preprocess``), a first turn that is not the human's is dropped.
- Alpaca / WizardLM: ``{"instruction": ..., "input": optional, "output": ...}``; a non-empty input follows the
  instruction after a blank line (H2O LLM Studio's default prompt_column_separator, "\\n\\n").
- prompt/response pairs: ``{"prompt": ..., "response": ...}`` (or ``"completion"``).
ShareGPT, Alpaca and pair records may carry a top-level ``"system"`` string.

``input_format="auto"`` picks the layout per record from its keys. A record that cannot be used raises
:class:`ConversationError` with a ``reason`` (a short key the preprocessing counts skipped records by) and a
message that says what is wrong and how to fix it; the caller adds the file and line.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")
INPUT_FORMATS = ("auto", "messages", "sharegpt", "alpaca", "pair")

# Reasons a record is skipped (the keys of the preprocessing's "skipped" counts).
NOT_JSON = "not_json"
UNRECOGNISED = "unrecognised_record"
UNKNOWN_ROLE = "unknown_role"
OUT_OF_ORDER = "roles_out_of_order"
NO_ASSISTANT = "no_assistant_turn"
EMPTY_CONTENT = "empty_content"
BAD_CONTENT = "content_not_text"
FORMAT_TOKENS = "format_error"

# ShareGPT speaker names. "human"/"gpt" are ShareGPT's own; the others occur in ShareGPT dumps (bard, bing,
# chatgpt answers) and in exports that already use chat roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


class ConversationError(ValueError):
    """A record that cannot become a conversation; ``reason`` is one of the module's reason keys."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ConversationError(BAD_CONTENT, f"{what} is {type(value).__name__}, not a string")
    return value


def _optional_system(record: dict) -> list[dict]:
    system = record.get("system")
    if system is None or system == "":
        return []
    return [{"role": "system", "content": _text(system, "'system'")}]


def from_messages(record: dict) -> list[dict]:
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise ConversationError(UNRECOGNISED, f"'messages' is {type(messages).__name__}, not a list of "
                                              "{\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConversationError(UNRECOGNISED, f"message {i} is not an object with 'role' and 'content'")
        out.append({"role": m["role"], "content": _text(m["content"], f"message {i}'s content")})
    return out


def from_sharegpt(record: dict) -> list[dict]:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise ConversationError(UNRECOGNISED, f"'conversations' is {type(turns).__name__}, not a list of "
                                              "{\"from\", \"value\"} objects")
    out = _optional_system(record)
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise ConversationError(UNRECOGNISED, f"turn {i} is not an object with 'from' and 'value'")
        who = t["from"]
        role = SHAREGPT_ROLES.get(who.lower() if isinstance(who, str) else who)
        if role is None:
            raise ConversationError(UNKNOWN_ROLE, f"turn {i} is from {who!r}; ShareGPT speakers are "
                                                  f"{sorted(SHAREGPT_ROLES)}")
        out.append({"role": role, "content": _text(t["value"], f"turn {i}'s value")})
    # FastChat's train.py: "Skip the first one if it is not from human".
    first = 1 if out and out[0]["role"] == "system" else 0
    if len(out) > first and out[first]["role"] == "assistant":
        del out[first]
    return out


def from_alpaca(record: dict) -> list[dict]:
    prompt = _text(record["instruction"], "'instruction'")
    if "output" not in record:
        raise ConversationError(NO_ASSISTANT, "an Alpaca record needs 'output' (the reply) beside 'instruction'")
    extra = record.get("input")
    if extra is not None and _text(extra, "'input'").strip():
        prompt = f"{prompt}\n\n{extra}"
    return _optional_system(record) + [{"role": "user", "content": prompt},
                                       {"role": "assistant", "content": _text(record["output"], "'output'")}]


def from_pair(record: dict) -> list[dict]:
    prompt = _text(record["prompt"], "'prompt'")
    key = "response" if "response" in record else "completion"
    if key not in record:
        raise ConversationError(NO_ASSISTANT, "a prompt record needs 'response' (or 'completion') beside 'prompt'")
    return _optional_system(record) + [{"role": "user", "content": prompt},
                                       {"role": "assistant", "content": _text(record[key], f"'{key}'")}]


READERS = {"messages": from_messages, "sharegpt": from_sharegpt, "alpaca": from_alpaca, "pair": from_pair}


def detect_format(record: dict) -> str:
    """The layout of one record, from its keys."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    if "prompt" in record:
        return "pair"
    raise ConversationError(UNRECOGNISED, f"no conversation in this record (keys: {sorted(record)[:10]}); expected "
                                          "'messages', 'conversations' (ShareGPT), 'instruction'/'output' (Alpaca) "
                                          "or 'prompt'/'response'")


def read_record(record: Any, input_format: str = "auto") -> tuple[list[dict], str]:
    """(messages as the record holds them, the layout used). Not yet validated: see :func:`validate`."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"--input-format {input_format!r} unknown; choose from {INPUT_FORMATS}")
    if not isinstance(record, dict):
        raise ConversationError(NOT_JSON, f"not a JSON object ({type(record).__name__})")
    layout = detect_format(record) if input_format == "auto" else input_format
    try:
        return READERS[layout](record), layout
    except KeyError as err:  # a field the forced --input-format needs
        raise ConversationError(UNRECOGNISED, f"no key {err} for --input-format {layout} (keys: "
                                              f"{sorted(record)[:10]})") from None


def validate(messages: list[dict], *, trailing_user: str = "error") -> list[dict]:
    """Check a conversation: known roles, an optional system message first, then user and assistant in
    turn starting with the user, no empty content, at least one assistant reply.

    A final user turn with no reply after it is an error, or with ``trailing_user="drop"`` it is removed
    (ShareGPT dumps often end on an unanswered question). Returns the (possibly shortened) messages."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConversationError(UNRECOGNISED, f"message {i} is not an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ConversationError(UNKNOWN_ROLE, f"message {i} has role {m['role']!r}; roles are {ROLES}")
        if not isinstance(m["content"], str):
            raise ConversationError(BAD_CONTENT, f"message {i}'s content is {type(m['content']).__name__}, "
                                                 "not a string")
        if not m["content"].strip():
            raise ConversationError(EMPTY_CONTENT, f"message {i} ({m['role']}) has empty content")
    start = 1 if messages and messages[0]["role"] == "system" else 0
    for i in range(start, len(messages)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if messages[i]["role"] != expected:
            where = "first" if i == start else f"after a {messages[i - 1]['role']} message"
            raise ConversationError(OUT_OF_ORDER, f"message {i} has role {messages[i]['role']!r} {where}; "
                                                  "expected an optional system message, then user and assistant "
                                                  "in turn, starting with the user")
    if len(messages) > start and messages[-1]["role"] == "user" and trailing_user == "drop":
        messages = messages[:-1]
    if not any(m["role"] == "assistant" for m in messages):
        raise ConversationError(NO_ASSISTANT, "no assistant turn: nothing to train on")
    if messages[-1]["role"] != "assistant":
        raise ConversationError(OUT_OF_ORDER, "the conversation ends with a user message that has no reply")
    return messages


def validate_prompt(messages: list[dict]) -> list[dict]:
    """A conversation so far, ending with the user message the next reply answers (for generation and DPO
    prompts): the same role rules as :func:`validate`, with a user message last."""
    if not messages or messages[-1].get("role") != "user":
        raise ConversationError(OUT_OF_ORDER, "a prompt must end with a user message")
    validate(messages + [{"role": "assistant", "content": "x"}])
    return messages


def conversation(record: Any, input_format: str = "auto") -> tuple[list[dict], str, bool]:
    """(validated messages, layout, whether a trailing unanswered user turn was dropped) of one record."""
    messages, layout = read_record(record, input_format)
    checked = validate(messages, trailing_user="drop")
    return checked, layout, len(checked) != len(messages)
