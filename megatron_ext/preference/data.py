"""Preference pairs: source layouts -> (prompt messages, chosen reply, rejected reply) -> token ids and masks.

Layouts read (`--layout`, or recognised per row with `auto`):

- ``prompt``: ``prompt`` (a string, or a list of messages) or ``messages`` (a list), optional ``system``,
  and ``chosen`` / ``rejected`` replies, each a string or an assistant message ``{"role": "assistant",
  "content": ...}``;
- ``conversations``: ``chosen`` and ``rejected`` are whole conversations (lists of messages) that share
  every message but the last, an assistant reply (the layout of Anthropic HH-RLHF as re-published in
  messages form, UltraFeedback-binarized, and most preference sets on the Hub); a separate ``prompt`` key,
  when present, is ignored unless the conversations hold the reply only;
- ``pku-saferlhf``: PKU-Alignment/PKU-SafeRLHF's ``prompt``, ``response_0``, ``response_1``,
  ``is_response_0_safe``, ``is_response_1_safe`` (``safer_response_id`` is read only to describe rows):
  as in the AmberSafe recipe, only pairs whose safety labels differ are kept and the safe reply is chosen
  (pairs labelled alike are counted as filtered, not as bad).

Rendering: the pair's two sequences are the chat format's rendering of prompt + reply (contract: the
format's `render`), and the loss mask is the format's own (the reply and its end-of-reply token, as SFT
trains them) restricted to the final reply, so earlier assistant turns of a multi-turn prompt are
conditioned on, never scored. The prompt's rendering
(`render_prompt`) must be a prefix of both sequences; a format or tokenizer that merges tokens across the
boundary is reported, not silently mis-masked.

A pair is packed into one training row (preference/dataset.py), so both sequences together must fit
``seq_length`` positions (a sequence of n tokens fills n - 1): a longer pair has its replies cut from the
end, the longer reply first, down to one reply token each (``truncate``) or is left out (``drop``). A prompt
too long to leave one reply token in each half is a bad row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYOUTS = ("auto", "prompt", "conversations", "pku-saferlhf")
ROLES = ("system", "user", "assistant")
TRUNCATE, DROP = "truncate", "drop"


class BadRow(ValueError):
    """A row that cannot be a preference pair (reported with its line number; fatal with --strict)."""


class FilteredRow(Exception):
    """A valid row the converter leaves out by design (PKU-SafeRLHF pairs with equal safety labels)."""


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple          # messages: ({"role": ..., "content": ...}, ...), ending with a user (or system) turn
    chosen: str
    rejected: str


def _message(m, where: str) -> dict:
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
        raise BadRow(f"{where}: a message must be an object with 'role' and 'content', got {str(m)[:80]!r}")
    if m["role"] not in ROLES:
        raise BadRow(f"{where}: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
    if not isinstance(m["content"], str):
        raise BadRow(f"{where}: content is {type(m['content']).__name__}, not a string")
    return {"role": m["role"], "content": m["content"]}


def _messages(value, where: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise BadRow(f"{where} is {type(value).__name__}: expected a string or a list of messages")
    return [_message(m, f"{where}[{i}]") for i, m in enumerate(value)]


def _reply(value, key: str) -> str:
    if value is None:
        raise BadRow(f"missing {key!r}")
    if isinstance(value, dict):
        value = _message(value, key)
        if value["role"] != "assistant":
            raise BadRow(f"{key!r} has role {value['role']!r}; a reply must be the assistant's")
        value = value["content"]
    if not isinstance(value, str):
        raise BadRow(f"{key!r} is {type(value).__name__}: expected a string, an assistant message or (layout "
                     "conversations) a list of messages")
    if not value.strip():
        raise BadRow(f"{key!r} is empty")
    return value


def _check_prompt(prompt: list[dict]) -> tuple:
    if not prompt:
        raise BadRow("no prompt (missing 'prompt' / 'messages', or the conversations hold only the reply)")
    if prompt[-1]["role"] == "assistant":
        raise BadRow("the prompt ends with an assistant turn: the reply to score must follow a user turn")
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        raise BadRow("the prompt has no non-empty user turn")
    return tuple(prompt)


def _finish(prompt, chosen: str, rejected: str) -> PreferencePair:
    if chosen == rejected:
        raise BadRow("'chosen' and 'rejected' are identical: the pair prefers nothing (drop or fix the row)")
    return PreferencePair(_check_prompt(list(prompt)), chosen, rejected)


def _prompt_of(doc: dict) -> list[dict]:
    if "prompt" in doc and doc["prompt"] is not None:
        prompt = _messages(doc["prompt"], "'prompt'")
    elif "messages" in doc:
        prompt = _messages(doc["messages"], "'messages'")
    else:
        raise BadRow(f"no 'prompt' or 'messages' (keys present: {sorted(doc)})")
    system = doc.get("system")
    if system:
        if not isinstance(system, str):
            raise BadRow(f"'system' is {type(system).__name__}, not a string")
        if prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": system}] + prompt
    return prompt


def from_prompt_layout(doc: dict) -> PreferencePair:
    for key in ("chosen", "rejected"):
        if key not in doc:
            raise BadRow(f"missing {key!r} (keys present: {sorted(doc)})")
    return _finish(_prompt_of(doc), _reply(doc["chosen"], "chosen"), _reply(doc["rejected"], "rejected"))


def from_conversations_layout(doc: dict) -> PreferencePair:
    convs = {}
    for key in ("chosen", "rejected"):
        if key not in doc:
            raise BadRow(f"missing {key!r} (keys present: {sorted(doc)})")
        conv = _messages(doc[key], repr(key)) if isinstance(doc[key], list) else None
        if not conv:
            raise BadRow(f"{key!r} must be a non-empty list of messages in the conversations layout")
        if conv[-1]["role"] != "assistant":
            raise BadRow(f"{key!r} ends with a {conv[-1]['role']} turn, not the assistant's reply")
        convs[key] = conv
    before_c, before_r = convs["chosen"][:-1], convs["rejected"][:-1]
    if before_c != before_r:
        raise BadRow("'chosen' and 'rejected' differ before their last message: a pair must share its prompt")
    prompt = before_c or _prompt_of(doc)
    return _finish(prompt, _reply(convs["chosen"][-1], "chosen"), _reply(convs["rejected"][-1], "rejected"))


def from_pku_saferlhf(doc: dict) -> PreferencePair:
    for key in ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe"):
        if key not in doc:
            raise BadRow(f"missing {key!r} (PKU-SafeRLHF layout; keys present: {sorted(doc)})")
    safe = (doc["is_response_0_safe"], doc["is_response_1_safe"])
    if not all(isinstance(s, bool) for s in safe):
        raise BadRow(f"is_response_0_safe / is_response_1_safe must be true or false, got {safe}")
    if safe[0] == safe[1]:
        raise FilteredRow("both replies " + ("safe" if safe[0] else "unsafe"))
    good = 0 if safe[0] else 1
    chosen = _reply(doc[f"response_{good}"], f"response_{good}")
    rejected = _reply(doc[f"response_{1 - good}"], f"response_{1 - good}")
    if not isinstance(doc["prompt"], str):
        raise BadRow(f"'prompt' is {type(doc['prompt']).__name__}, not a string (PKU-SafeRLHF layout)")
    return _finish(_messages(doc["prompt"], "'prompt'"), chosen, rejected)


def detect_layout(doc: dict) -> str:
    if "response_0" in doc and "is_response_0_safe" in doc:
        return "pku-saferlhf"
    if isinstance(doc.get("chosen"), list):
        return "conversations"
    return "prompt"


CONVERTERS = {"prompt": from_prompt_layout, "conversations": from_conversations_layout,
              "pku-saferlhf": from_pku_saferlhf}


def pair_from_record(doc, layout: str = "auto") -> PreferencePair:
    """The preference pair of one JSON record; BadRow / FilteredRow say why not."""
    if not isinstance(doc, dict):
        raise BadRow(f"not a JSON object ({type(doc).__name__})")
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    return CONVERTERS[detect_layout(doc) if layout == "auto" else layout](doc)


# --- rendering ----------------------------------------------------------------

@dataclass
class RenderedPair:
    chosen_ids: np.ndarray
    chosen_mask: np.ndarray      # 1 on the final reply's tokens (targets), 0 elsewhere
    rejected_ids: np.ndarray
    rejected_mask: np.ndarray
    prompt_tokens: int
    truncated: bool = False

    @property
    def positions(self) -> int:
        """Row positions the pair fills when packed (a sequence of n tokens fills n - 1)."""
        return len(self.chosen_ids) - 1 + len(self.rejected_ids) - 1


def _render_one(fmt, tokenizer, prompt: list[dict], prompt_ids: list[int], reply: str, which: str):
    """The format's ids and mask of prompt + reply (the mask SFT trains: the reply and its end-of-reply
    token), with every position inside the prompt unmasked (earlier assistant turns are context here)."""
    ids, mask = fmt.render(prompt + [{"role": "assistant", "content": reply}], tokenizer)
    ids = list(ids)
    n = len(prompt_ids)
    if ids[:n] != prompt_ids or len(ids) <= n:
        raise BadRow(f"the {fmt.name} rendering of prompt + {which} does not start with the rendering of the "
                     "prompt alone (the tokenizer merges across the reply boundary?), so the reply's tokens "
                     "cannot be told apart; report this format/tokenizer pair")
    mask = np.asarray(mask, dtype=np.uint8)
    mask[:n] = 0
    if not mask.any():
        raise BadRow(f"the {which} reply renders to no trained token")
    return np.asarray(ids, dtype=np.int64), mask


def render_pair(fmt, tokenizer, pair: PreferencePair, seq_length: int, overlong: str = TRUNCATE) -> RenderedPair:
    """Token ids and reply masks of the pair's two sequences, fitted into one row of seq_length positions."""
    prompt = [dict(m) for m in pair.prompt]
    try:
        prompt_ids = list(fmt.render_prompt(prompt, tokenizer))
        c_ids, c_mask = _render_one(fmt, tokenizer, prompt, prompt_ids, pair.chosen, "chosen")
        r_ids, r_mask = _render_one(fmt, tokenizer, prompt, prompt_ids, pair.rejected, "rejected")
    except BadRow:
        raise
    except ValueError as err:  # the chat format's own checks (roles out of order, empty content, ...)
        raise BadRow(f"{fmt.name} format: {err}") from err
    p = len(prompt_ids)
    if 2 * p > seq_length:
        raise BadRow(f"prompt of {p} tokens is longer than the sequence allows: a pair (prompt + chosen, "
                     f"prompt + rejected) shares one row of --seq-length {seq_length} positions, so a prompt "
                     f"may hold at most {seq_length // 2} tokens; raise --seq-length or shorten the prompt")
    if np.array_equal(c_ids, r_ids):
        raise BadRow("'chosen' and 'rejected' render to the same tokens: the pair prefers nothing")
    out = RenderedPair(c_ids, c_mask, r_ids, r_mask, p)
    excess = out.positions - seq_length
    if excess > 0:
        if overlong == DROP:
            raise FilteredRow(f"pair of {out.positions} positions is longer than a row of {seq_length} "
                              "(--overlong drop)")
        # Cut reply tails, the longer sequence first, never below one reply token.
        lengths = [len(c_ids), len(r_ids)]
        while excess > 0:
            i = 0 if lengths[0] >= lengths[1] else 1
            other = lengths[1 - i]
            cut = min(excess, lengths[i] - (p + 1), max(1, lengths[i] - other))
            lengths[i] -= cut
            excess -= cut
        out = RenderedPair(c_ids[:lengths[0]], c_mask[:lengths[0]], r_ids[:lengths[1]], r_mask[:lengths[1]],
                           p, truncated=True)
    return out


def messages_for_sft(pair: PreferencePair) -> list[dict]:
    """The chosen conversation (prompt + chosen reply): what the SFT stage before DPO trains on."""
    return [dict(m) for m in pair.prompt] + [{"role": "assistant", "content": pair.chosen}]
