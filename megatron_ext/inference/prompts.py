"""Prompts for generation: from the command line or a JSONL file, as plain text or as chat messages rendered
by a chat format (megatron_ext/data/chat_formats.py), turned into token ids; and the stop rule they imply."""

from __future__ import annotations

import json

from megatron_ext.inference.generate import Stop

ROLES = ("system", "user", "assistant")


def read_prompts_file(path: str) -> list:
    """One prompt per line: {"prompt": "text"} or {"messages": [{"role": ..., "content": ...}, ...]}; blank
    lines are skipped. A bad line stops with its file and line number."""
    prompts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON ({exc.msg}); each line must be "
                                 '{"prompt": "text"} or {"messages": [...]}') from None
            if not isinstance(record, dict) or ("prompt" in record) == ("messages" in record):
                raise ValueError(f'{where}: needs exactly one of "prompt" (text) or "messages" (a chat), e.g. '
                                 '{"prompt": "Once upon a time"}')
            if "prompt" in record:
                if not isinstance(record["prompt"], str):
                    raise ValueError(f'{where}: "prompt" must be a string')
                prompts.append(record["prompt"])
            else:
                prompts.append(check_messages(record["messages"], where))
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


def check_messages(messages, where: str) -> list:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}}')
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: each message needs a role ({', '.join(ROLES)}) and a string content; got {m!r}")
    return messages


def encode_prompts(prompts: list, tokenizer, chat_format=None, add_bos: bool = False) -> list[list[int]]:
    """Token ids of each prompt. With a chat format a text prompt is one user message, and messages end where
    the assistant's reply starts (ChatFormat.render_prompt); without one, messages are refused."""
    encoded = []
    for index, prompt in enumerate(prompts):
        if chat_format is not None:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            encoded.append(list(chat_format.render_prompt(messages, tokenizer)))
            continue
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {index} is a chat (messages) but no chat format is set: pass --chat-format "
                             "NAME (the format the model was fine-tuned with)")
        ids = list(tokenizer.tokenize(prompt))
        if add_bos:
            if tokenizer.bos is None or tokenizer.bos < 0:
                raise ValueError("--add-bos: the tokenizer has no BOS token")
            ids = [tokenizer.bos] + ids
        if not ids:
            raise ValueError(f"prompt {index} is empty (no tokens): give it some text, or pass --add-bos")
        encoded.append(ids)
    return encoded


def stop_rule(tokenizer, stop_strings=(), chat_format=None, ignore_eos: bool = False) -> Stop:
    """EOS (unless ignore_eos), the chat format's end-of-reply token, and the stop strings."""
    token_ids, strings = set(), [s for s in stop_strings if s]
    if not ignore_eos and getattr(tokenizer, "eod", None) is not None and tokenizer.eod >= 0:
        token_ids.add(tokenizer.eod)
    if chat_format is not None:
        from megatron_ext.data.chat_formats import token_ids as single_tokens

        # The format's own split table: the strings this tokenizer encodes as one id wherever they occur.
        token = single_tokens(tokenizer).get(chat_format.end_of_reply)
        ids = [token] if token is not None else tokenizer.tokenize(chat_format.end_of_reply)
        if len(ids) == 1:
            token_ids.add(ids[0])
        else:  # not a single token in this vocabulary: stop on its text
            strings.append(chat_format.end_of_reply)
    return Stop(frozenset(token_ids), tuple(strings))
