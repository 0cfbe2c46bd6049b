"""Chat formats: a conversation -> token ids and a loss mask, plus the Jinja ``chat_template`` that makes
transformers render exactly the same ids (the exported model chats in the format it was fine-tuned on).

Formats (sources and the exact strings: docs/chat_formats.md):

- ``crystalchat``: LLM360/CrystalChat's model card ("Instruction Format"):
  ``<s> <|sys_start|> system prompt <|sys_end|> <|im_start|> first user utterance <|im_end|> first model
  response <|im_start|> next user utterance <|im_end|> next model response </s>``; the card's generation
  example ends a reply with ``</s>`` right after its last character, and its prompts end at ``<|im_end|>``.
- ``amberchat``: FastChat's ``zero_shot`` template (fastchat/conversation.py: system "A chat between a curious
  human and an artificial intelligence assistant. ...", roles Human/Assistant, ADD_COLON_SINGLE, sep
  "\\n### "), which LLM360/AmberChat's card uses ("template adapted from fastchat"); each reply ends with
  ``</s>`` as in FastChat's training code (vicuna's sep2, the Llama EOS; AmberChat was trained with FastChat's
  train_mem.py, LLM360/amber-train finetune/amberchat) and as the card's decoding implies (it drops the last
  generated token).
- ``dclm-it``: TRI-ML/DCLM-1B-IT's card: ``Below is an instruction that describes a task.\\n\\nWrite a response
  that appropriately completes the request.\\n\\n### Instruction:\\n{instruction}\\n\\n### Response:``; the reply
  follows directly (Stanford Alpaca's convention: target = output + EOS appended to the prompt) and ends at
  ``<|endoftext|>``.
- ``mamba-gpt``: CobraMamba/mamba-gpt-3b's card: ``<|prompt|>{prompt}</s><|answer|>``, trained with H2O LLM
  Studio, whose defaults (ConfigNLPCausalLMDataset) add ``<|system|>`` before a system prompt and the EOS
  ``</s>`` after system, prompt and answer; ``<|prompt|>`` etc. are plain text (the model has 32000 rows).
- ``chatml``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, ``<|im_start|>assistant\\n`` to
  prompt a reply (OpenAI's ChatML; FastChat's CHATML separator style).
- ``hf``: the ``chat_template`` of a Hugging Face tokenizer directory, rendered by transformers itself.

How text becomes ids. The trainer's tokenizer (data/tokenizers.py) encodes the text between two special
tokens as a text of its own; the export writes a transformers tokenizer that does the same
(checkpoint/hf_tokenizer_export.py). A named format's text is split at every string the exported tokenizer
treats as one token (the tokenizer's added/control tokens: ``<s>``, ``</s>``, ``<|endoftext|>``, and the
--special-tokens), each such string becomes its id, and each piece between is encoded by the base tokenizer
with its character offsets. The loss mask follows transformers' ``{% generation %}`` rule: from the token
holding a reply's first character to the token holding its last, so that ``apply_chat_template(...,
return_assistant_tokens_mask=True)`` on the exported tokenizer gives the same mask as :meth:`ChatFormat.render`.
"""

from __future__ import annotations

import re
from typing import Sequence

from megatron_ext.data.conversations import ConversationError, validate, validate_prompt

CHAT_FORMATS = ("crystalchat", "amberchat", "dclm-it", "mamba-gpt", "chatml", "hf")


class ChatFormatError(ValueError):
    """A format that cannot be used with this tokenizer (or an unknown format name)."""


# ---- text -> ids with offsets, as the exported tokenizer encodes ----------------------------------------

class _Encoder:
    """The split table and piece encoder of one trainer tokenizer (cached on the tokenizer object)."""

    def __init__(self, tokenizer):
        base = getattr(tokenizer, "base", tokenizer)
        self.base = base
        self.tokens: dict[str, int] = {}
        if hasattr(base, "_sp"):  # SentencePieceTokenizer: control, user-defined and unknown pieces are whole
            from sentencepiece import sentencepiece_model_pb2 as pb

            proto = pb.ModelProto()
            proto.ParseFromString(base._sp.serialized_model_proto())
            whole = (pb.ModelProto.SentencePiece.CONTROL, pb.ModelProto.SentencePiece.USER_DEFINED,
                     pb.ModelProto.SentencePiece.UNKNOWN)
            self.tokens = {p.piece: i for i, p in enumerate(proto.pieces) if p.type in whole}
            self.kind = "sentencepiece"
        elif hasattr(base, "_tok"):  # HuggingFaceTokenizer: its added tokens are matched before the model runs
            self.tokens = {t.content: i for i, t in base._tok.added_tokens_decoder.items()}
            self.kind = "huggingface"
        else:
            self.kind = None
        self.tokens.update(getattr(tokenizer, "special_token_ids", {}))
        alternatives = sorted(self.tokens, key=len, reverse=True)  # longest first: a prefix must not win
        self.pattern = re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
        self.name = type(base).__name__

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, per-token character spans in text)."""
        if self.kind is None:
            raise ChatFormatError(f"chat formats need a text tokenizer (SentencePiece or Hugging Face); "
                                  f"{self.name} cannot represent a conversation")
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        pos = 0
        for m in (self.pattern.finditer(text) if self.pattern else ()):
            if m.start() > pos:
                self._piece(text[pos:m.start()], pos, ids, spans)
            ids.append(self.tokens[m.group()])
            spans.append((m.start(), m.end()))
            pos = m.end()
        if pos < len(text):
            self._piece(text[pos:], pos, ids, spans)
        return ids, spans

    def _piece(self, piece: str, offset: int, ids: list, spans: list) -> None:
        if self.kind == "huggingface":
            enc = self.base._tok(piece, add_special_tokens=False, return_offsets_mapping=True)
            ids.extend(enc["input_ids"])
            spans.extend((offset + s, offset + e) for s, e in enc["offset_mapping"])
            return
        # sentencepiece reports byte offsets; a piece of zero width (the dummy-prefix space, the leading bytes
        # of a byte-fallback character) is given the character it belongs to, as transformers' alignments do.
        char_at = []
        for i, ch in enumerate(piece):
            char_at.extend([i] * len(ch.encode("utf-8")))
        char_at.append(len(piece))
        for p in self.base._sp.encode(piece, return_type="proto").pieces:
            start, end = char_at[p.begin], char_at[p.end]
            if end <= start:
                end = min(start + 1, len(piece))
            ids.append(p.id)
            spans.append((offset + start, offset + end))


def _encoder(tokenizer) -> _Encoder:
    enc = tokenizer.__dict__.get("_chat_encoder")
    if enc is None:
        enc = _Encoder(tokenizer)
        tokenizer.__dict__["_chat_encoder"] = enc
    return enc


def token_ids(tokenizer) -> dict[str, int]:
    """The strings this tokenizer encodes as one id wherever they occur in a text (the split table)."""
    return dict(_encoder(tokenizer).tokens)


def _char_to_token(spans: Sequence[tuple[int, int]], char: int):
    for i, (s, e) in enumerate(spans):
        if s <= char < e:
            return i
    return None


def mask_from_spans(token_spans: Sequence[tuple[int, int]], trained: Sequence[tuple[int, int]]) -> list[int]:
    """Loss mask from trained character ranges [s, e), by transformers' {% generation %} rule
    (apply_chat_template's assistant_masks): tokens from the one holding char s to the one holding e - 1."""
    mask = [0] * len(token_spans)
    for s, e in trained:
        first, last = _char_to_token(token_spans, s), _char_to_token(token_spans, e - 1)
        if first is None:
            continue
        for i in range(first, last + 1 if last is not None else len(mask)):
            mask[i] = 1
    return mask


# ---- the formats ---------------------------------------------------------------------------------------

class ChatFormat:
    """A named format. ``chunks`` lays a validated conversation out as (text, trained) pieces; the Jinja
    ``chat_template`` renders the same text and wraps the trained pieces in {% generation %}."""

    name = ""
    special_tokens: tuple[str, ...] = ()  # strings the format needs as single ids
    end_of_reply = ""                     # the token that ends a reply: generation stops there
    chat_template = ""
    source = ""                           # where the format is specified

    def chunks(self, messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, bool]]:
        raise NotImplementedError

    def render_text(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as text (special tokens written out), as the chat_template renders it."""
        msgs = validate_prompt(list(messages)) if add_generation_prompt else validate(list(messages))
        return "".join(text for text, _ in self.chunks(msgs, add_generation_prompt))

    def missing_tokens(self, tokenizer) -> list[str]:
        """The format's tokens this tokenizer would not encode as one id."""
        known = _encoder(tokenizer).tokens
        return [t for t in self.special_tokens if t not in known]

    def _encoder_for(self, tokenizer) -> _Encoder:
        enc = _encoder(tokenizer)
        missing = [t for t in self.special_tokens if t not in enc.tokens]
        if enc.kind is not None and missing:
            raise ChatFormatError(
                f"the {self.name} format needs {', '.join(missing)} as single tokens and the tokenizer "
                f"({enc.name}) has no such token: tools/preprocess_sft.py adds them (recorded in its .json as "
                "the --special-tokens the training run passes), or pass --special-tokens "
                f"{','.join(missing)} yourself")
        return enc

    def render(self, messages: Sequence[dict], tokenizer, train_on_prompt: bool = False
               ) -> tuple[list[int], list[int]]:
        """(ids, loss_mask) of a conversation that ends with an assistant reply. loss_mask[i] == 1: token i
        is a target (the assistant replies and their end-of-reply token; everything with train_on_prompt)."""
        msgs = validate(list(messages))
        chunks = self.chunks(msgs, False)
        ids, spans = self._encoder_for(tokenizer).encode("".join(text for text, _ in chunks))
        if train_on_prompt:
            return ids, [1] * len(ids)
        trained, pos = [], 0
        for text, is_reply in chunks:
            if is_reply and text:
                trained.append((pos, pos + len(text)))
            pos += len(text)
        return ids, mask_from_spans(spans, trained)

    def render_prompt(self, messages: Sequence[dict], tokenizer) -> list[int]:
        """The ids of a conversation so far (ending with a user message) up to where the next reply starts:
        a prefix of render() of the same conversation with that reply."""
        msgs = validate_prompt(list(messages))
        text = "".join(text for text, _ in self.chunks(msgs, True))
        return self._encoder_for(tokenizer).encode(text)[0]

    def __repr__(self) -> str:
        return f"<chat format {self.name}>"


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


# Jinja pieces shared by the templates. transformers compiles chat templates with trim_blocks and
# lstrip_blocks, so the templates here have no newline outside string literals.
_UNKNOWN_ROLE = "{% else %}{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"


class CrystalChat(ChatFormat):
    name = "crystalchat"
    special_tokens = ("<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|sys_start|>", "<|sys_end|>")
    end_of_reply = "</s>"
    source = "LLM360/CrystalChat model card, 'Instruction Format'"
    chat_template = (
        "{{ '<s>' }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ ' <|sys_start|> ' + message['content'] + ' <|sys_end|>' }}"
        "{% elif message['role'] == 'user' %}{{ ' <|im_start|> ' + message['content'] + ' <|im_end|>' }}"
        "{% elif message['role'] == 'assistant' %}{% generation %}{{ ' ' + message['content'] }}"
        "{% if loop.last %}{{ '</s>' }}{% endif %}{% endgeneration %}"
        + _UNKNOWN_ROLE +
        "{% endfor %}")

    def chunks(self, messages, add_generation_prompt):
        out = [("<s>", False)]
        for i, m in enumerate(messages):
            if m["role"] == "system":
                out.append((f" <|sys_start|> {m['content']} <|sys_end|>", False))
            elif m["role"] == "user":
                out.append((f" <|im_start|> {m['content']} <|im_end|>", False))
            else:  # a reply; only the conversation's last reply ends with </s>, as the card shows
                out.append((" " + m["content"] + ("</s>" if i == len(messages) - 1 else ""), True))
        return out


AMBER_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the human's questions.")


class AmberChat(ChatFormat):
    name = "amberchat"
    special_tokens = ("<s>", "</s>")
    end_of_reply = "</s>"
    source = "FastChat zero_shot/one_shot template (fastchat/conversation.py) as in LLM360/AmberChat's card"
    chat_template = (
        "{{ '<s>' }}"
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
        "{% else %}{{ '" + AMBER_SYSTEM.replace("'", "\\'") + "' }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}"
        "{% elif message['role'] == 'user' %}{{ '\\n### Human: ' + message['content'] + '\\n### Assistant:' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{% generation %}{{ ' ' + message['content'] + '</s>' }}{% endgeneration %}"
        + _UNKNOWN_ROLE +
        "{% endfor %}")

    def chunks(self, messages, add_generation_prompt):
        system, rest = _split_system(messages)
        out = [("<s>" + (AMBER_SYSTEM if system is None else system), False)]
        for m in rest:
            if m["role"] == "user":
                out.append((f"\n### Human: {m['content']}\n### Assistant:", False))
            else:
                out.append((" " + m["content"] + "</s>", True))
        return out


DCLM_HEADER = ("Below is an instruction that describes a task.\n\n"
               "Write a response that appropriately completes the request.")


class DclmIT(ChatFormat):
    name = "dclm-it"
    special_tokens = ("<|endoftext|>",)
    end_of_reply = "<|endoftext|>"
    source = "TRI-ML/DCLM-1B-IT model card, create_prompt()"
    chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
        "{% else %}{{ '" + DCLM_HEADER.replace("\n", "\\n") + "' }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}"
        "{% elif message['role'] == 'user' %}{{ '\\n\\n### Instruction:\\n' + message['content'] + "
        "'\\n\\n### Response:' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + '<|endoftext|>' }}{% endgeneration %}"
        + _UNKNOWN_ROLE +
        "{% endfor %}")

    def chunks(self, messages, add_generation_prompt):
        system, rest = _split_system(messages)
        out = [(DCLM_HEADER if system is None else system, False)]
        for m in rest:
            if m["role"] == "user":
                out.append((f"\n\n### Instruction:\n{m['content']}\n\n### Response:", False))
            else:
                out.append((m["content"] + "<|endoftext|>", True))
        return out


class MambaGPT(ChatFormat):
    name = "mamba-gpt"
    special_tokens = ("</s>",)
    end_of_reply = "</s>"
    source = "CobraMamba/mamba-gpt-3b model card; H2O LLM Studio's dataset defaults"
    chat_template = (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ '<|system|>' + message['content'] + '</s>' }}"
        "{% elif message['role'] == 'user' %}{{ '<|prompt|>' + message['content'] + '</s><|answer|>' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + '</s>' }}{% endgeneration %}"
        + _UNKNOWN_ROLE +
        "{% endfor %}")

    def chunks(self, messages, add_generation_prompt):
        out = []
        for m in messages:
            if m["role"] == "system":
                out.append((f"<|system|>{m['content']}</s>", False))
            elif m["role"] == "user":
                out.append((f"<|prompt|>{m['content']}</s><|answer|>", False))
            else:
                out.append((m["content"] + "</s>", True))
        return out


class ChatML(ChatFormat):
    name = "chatml"
    special_tokens = ("<|im_start|>", "<|im_end|>")
    end_of_reply = "<|im_end|>"
    source = "OpenAI ChatML; FastChat's CHATML separator style"
    chat_template = (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
        "{% elif message['role'] in ['system', 'user'] %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        + _UNKNOWN_ROLE +
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

    def chunks(self, messages, add_generation_prompt):
        out = []
        for m in messages:
            if m["role"] == "assistant":
                out += [("<|im_start|>assistant\n", False), (m["content"] + "<|im_end|>", True), ("\n", False)]
            else:
                out.append((f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", False))
        if add_generation_prompt:
            out.append(("<|im_start|>assistant\n", False))
        return out


_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class HFChatFormat(ChatFormat):
    """A Hugging Face tokenizer directory's own chat_template, rendered and tokenized by transformers: ids and
    masks are apply_chat_template(..., return_assistant_tokens_mask=True)'s. A template without
    {% generation %} gets its reply ranges from rendering prefixes: the text up to a reply is the conversation
    before it with add_generation_prompt, the reply runs to the end of the conversation rendered through it."""

    name = "hf"
    source = "the tokenizer directory's tokenizer_config.json / chat_template.jinja"

    def __init__(self, tokenizer_dir: str):
        from transformers import AutoTokenizer

        if not tokenizer_dir:
            raise ChatFormatError("--chat-format hf needs a Hugging Face tokenizer directory (--tokenizer-model DIR "
                                  "with --tokenizer-type HuggingFaceTokenizer) whose chat_template it uses")
        try:
            self._hf = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ChatFormatError(f"--chat-format hf: cannot load a tokenizer from {tokenizer_dir} ({err})") from err
        template = self._hf.chat_template
        if isinstance(template, dict):
            template = template.get("default")
        if not template:
            raise ChatFormatError(f"--chat-format hf: the tokenizer in {tokenizer_dir} has no chat_template; name a "
                                  f"format instead (one of {CHAT_FORMATS[:-1]})")
        self.tokenizer_dir = tokenizer_dir
        self.chat_template = template
        # As HuggingFaceTokenizer.eod: a bare tokenizer.json (GPT-NeoX's) names no eos but has <|endoftext|>.
        eos = self._hf.eos_token or ("<|endoftext|>" if "<|endoftext|>" in self._hf.get_vocab() else None)
        if eos is None:
            raise ChatFormatError(f"--chat-format hf: the tokenizer in {tokenizer_dir} names no eos_token, so the end "
                                  "of a reply is unknown; set eos_token in its tokenizer_config.json")
        self.end_of_reply = eos
        self.special_tokens = ()
        self.has_generation = bool(_GENERATION_TAG.search(template))
        self._with_tokens = {}

    def _hf_for(self, tokenizer):
        """The directory's tokenizer with the run's --special-tokens added at the trainer's ids."""
        added = dict(getattr(tokenizer, "special_token_ids", {}))
        key = tuple(sorted(added.items()))
        if key not in self._with_tokens:
            import copy

            base = getattr(tokenizer, "base", tokenizer)
            if not hasattr(base, "_tok"):
                raise ChatFormatError("--chat-format hf renders with transformers: use --tokenizer-type "
                                      f"HuggingFaceTokenizer --tokenizer-model {self.tokenizer_dir}")
            hf = copy.deepcopy(self._hf) if added else self._hf
            new = [t for t in added if t not in hf.get_vocab()]
            if new:
                hf.add_tokens(new, special_tokens=True)
            wrong = {t: (hf.convert_tokens_to_ids(t), i) for t, i in added.items() if hf.convert_tokens_to_ids(t) != i}
            if wrong or len(self._hf) != base.vocab_size:
                raise ChatFormatError(f"--chat-format hf: the tokenizer in {self.tokenizer_dir} is not the run's "
                                      f"tokenizer ({base.path}); use the same directory for both")
            self._with_tokens[key] = hf
        return self._with_tokens[key]

    def render_text(self, messages, add_generation_prompt=False):
        msgs = validate_prompt(list(messages)) if add_generation_prompt else validate(list(messages))
        return self._hf.apply_chat_template(msgs, chat_template=self.chat_template, tokenize=False,
                                            add_generation_prompt=add_generation_prompt)

    def render(self, messages, tokenizer, train_on_prompt=False):
        msgs = validate(list(messages))
        hf = self._hf_for(tokenizer)
        out = hf.apply_chat_template(msgs, chat_template=self.chat_template, tokenize=True, return_dict=True,
                                     return_assistant_tokens_mask=self.has_generation)
        ids = [int(i) for i in out["input_ids"]]
        if train_on_prompt:
            return ids, [1] * len(ids)
        if self.has_generation:
            return ids, [int(m) for m in out["assistant_masks"]]

        def text(upto, prompt):
            return hf.apply_chat_template(msgs[:upto], chat_template=self.chat_template, tokenize=False,
                                          add_generation_prompt=prompt)

        full = text(len(msgs), False)
        trained = []
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before, through = text(k, True), text(k + 1, False)
            if not (full.startswith(through) and through.startswith(before)):
                raise ChatFormatError(
                    "--chat-format hf: this chat_template renders the turns before a reply differently once the "
                    "reply follows (or its generation prompt is not where the reply starts), so the reply cannot "
                    "be located; add {% generation %} ... {% endgeneration %} around the replies in the template")
            trained.append((len(before), len(through)))
        enc = hf(full, add_special_tokens=False, return_offsets_mapping=True)
        if [int(i) for i in enc["input_ids"]] != ids:
            raise ChatFormatError("--chat-format hf: transformers tokenizes the rendered text differently from "
                                  "apply_chat_template (unexpected); report this tokenizer")
        return ids, mask_from_spans([tuple(s) for s in enc["offset_mapping"]], trained)

    def render_prompt(self, messages, tokenizer):
        msgs = validate_prompt(list(messages))
        out = self._hf_for(tokenizer).apply_chat_template(msgs, chat_template=self.chat_template, tokenize=True,
                                                          return_dict=True, add_generation_prompt=True)
        return [int(i) for i in out["input_ids"]]

    def missing_tokens(self, tokenizer):
        return []


_NAMED = {f.name: f for f in (CrystalChat, AmberChat, DclmIT, MambaGPT, ChatML)}


def get_chat_format(name: str, tokenizer_dir: str | None = None) -> ChatFormat:
    """The format NAME; "hf" reads the chat_template of the Hugging Face tokenizer in TOKENIZER_DIR."""
    if name == "hf":
        return HFChatFormat(tokenizer_dir)
    if name not in _NAMED:
        raise ChatFormatError(f"--chat-format {name!r} unknown; choose from {CHAT_FORMATS}")
    return _NAMED[name]()


def format_tokenizer(fmt: ChatFormat, tokenizer_type: str, tokenizer_model: str | None,
                     vocab_size: int | None = None, special_tokens=None, vocab_pad_to: int | None = None):
    """(tokenizer, the --special-tokens the training run must pass): the run's tokenizer with the user's
    --special-tokens, plus the tokens FMT needs that it would not encode as one id (added after the
    vocabulary by data/tokenizers.py's SpecialTokensTokenizer, in the format's order)."""
    from megatron_ext.data.tokenizers import build_tokenizer, resolve_special_tokens

    specials = list(resolve_special_tokens(special_tokens))
    tokenizer = build_tokenizer(tokenizer_type, tokenizer_model, vocab_size, special_tokens=specials or None,
                                vocab_pad_to=vocab_pad_to)
    if _encoder(tokenizer).kind is None:
        raise ChatFormatError(f"--chat-format {fmt.name} needs a text tokenizer: {tokenizer_type} cannot represent "
                              f"{', '.join(fmt.special_tokens) or 'a conversation'}; use SentencePieceTokenizer or "
                              "HuggingFaceTokenizer")
    missing = fmt.missing_tokens(tokenizer)
    if missing:
        specials += missing
        tokenizer = build_tokenizer(tokenizer_type, tokenizer_model, vocab_size, special_tokens=specials,
                                    vocab_pad_to=vocab_pad_to)
        still = fmt.missing_tokens(tokenizer)
        if still:
            raise ChatFormatError(f"--chat-format {fmt.name}: the tokenizer cannot represent {still} as single "
                                  "tokens even as added special tokens")
    return tokenizer, specials


__all__ = ["CHAT_FORMATS", "ChatFormat", "ChatFormatError", "ConversationError", "get_chat_format",
           "format_tokenizer", "mask_from_spans", "token_ids"]
