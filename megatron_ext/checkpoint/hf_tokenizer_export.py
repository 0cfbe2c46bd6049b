"""The tokenizer an export ships, as transformers loads it: the run's tokenizer with its --special-tokens
at the ids the trainer gave them, the chat format's chat_template, and generation_config.json's end token
set to the format's end of reply, so that `AutoTokenizer.from_pretrained(OUT).apply_chat_template(...)`
gives the very ids the model was fine-tuned on and `generate()` stops where a reply ends.

Copying the run's tokenizer files is not enough, for three reasons this module handles:

- the trainer's SpecialTokensTokenizer (data/tokenizers.py) appends --special-tokens after the base
  vocabulary; the files do not have them. They are added here as special tokens, and each id is checked
  against the trainer's.
- the trainer encodes the text between two special tokens (its --special-tokens, and for a chat format also
  the base tokenizer's own: <s>, </s>, <|endoftext|>) as a text of its own. A SentencePiece model then puts
  its dummy-prefix space before every such piece, and transformers' LLaMA conversion does not (its Metaspace
  pre-tokenizer prefixes only the start of the whole string, and never a text that starts with a space). So
  a SentencePiece model is written as a tokenizer.json whose normalizer prefixes every piece (transformers
  splits at special tokens before normalizing), and an HF tokenizer's "first" prefix scheme becomes
  "always" (not for the "hf" format, which the trainer renders with transformers itself). An HF tokenizer
  is rewritten only with special tokens or a chat format, else copied as it is. tokenizer_config.json names
  the plain fast tokenizer class, so transformers loads tokenizer.json as written instead of rebuilding it
  from the vocabulary with its own pre-tokenizer.
- the chat template lives in tokenizer_config.json ("chat_template"), which a stale chat_template.jinja
  from the source would override: that file is removed.

After writing, the export loads the result with transformers and compares it with the trainer's tokenizer
on probe texts and on a sample conversation (render() against apply_chat_template()); a difference is
reported as a warning that names the text and the first differing token.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping

from megatron_ext.checkpoint.hf_arch import ConversionError

NO_CHAT_FORMAT = ("none", "")  # --chat-format none: export without a chat template
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")

# A conversation rendered both ways at export time: system, two user turns, two replies,
# leading/trailing spaces and newlines inside contents, non-ASCII text.
SAMPLE_CONVERSATION = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": " Write a line\nof code, please.  "},
    {"role": "assistant", "content": "print('héllo')\n"},
)
_PROBE_TEXTS = ("hello world", " leading space", "two  spaces\n\nand lines\n", "naïve café 🙂", "x")


# ---- the run's tokenizer ------------------------------------------------------------------------

def run_tokenizer(root: str, args: dict):
    """The tokenizer the run trained with (data/tokenizers.py's build_tokenizer on its recorded flags), or
    None when it has none (mock data, NullTokenizer) or its files are gone. A recorded path that no longer
    exists falls back to the checkpoint's own tokenizer/ (an import's copy), as --load does."""
    from megatron_ext.data.tokenizers import build_tokenizer

    kind, model = args.get("tokenizer_type"), args.get("tokenizer_model")
    if not model or kind in (None, "NullTokenizer"):
        return None
    carried = os.path.join(root, "tokenizer")
    if not os.path.exists(model) and os.path.isdir(carried):
        model = carried
    if not os.path.exists(model):
        return None
    try:
        return build_tokenizer(kind, model, args.get("vocab_size"), special_tokens=args.get("special_tokens"),
                               vocab_pad_to=args.get("vocab_pad_to"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot rebuild the run's tokenizer ({kind} {model}, --special-tokens "
                              f"{args.get('special_tokens')}, --vocab-pad-to {args.get('vocab_pad_to')}): "
                              f"{exc}") from None


def _base(tokenizer):
    return getattr(tokenizer, "base", tokenizer)


def _added_ids(tokenizer) -> dict:
    return dict(getattr(tokenizer, "special_token_ids", {}))


def _piece(tokenizer, token_id: int) -> str | None:
    """The token string of an id of the base vocabulary (None for -1)."""
    if token_id is None or token_id < 0:
        return None
    base = _base(tokenizer)
    if hasattr(base, "_sp"):
        return base._sp.id_to_piece(token_id)
    return base._tok.convert_ids_to_tokens(token_id)


def token_id(tokenizer, token: str) -> int | None:
    """The single id the trainer's tokenizer gives TOKEN: an added special token, the base vocabulary's
    document end / BOS written as text (</s>, <s>, <|endoftext|>), or a text that encodes to one id."""
    added = _added_ids(tokenizer)
    if token in added:
        return added[token]
    for special in (tokenizer.eod, tokenizer.bos):
        if special >= 0 and _piece(tokenizer, special) == token:
            return special
    ids = tokenizer.tokenize(token)
    return ids[0] if len(ids) == 1 else None


# ---- the transformers tokenizer -----------------------------------------------------------------

def _sentencepiece_backend(model_file: str):
    """A tokenizers.Tokenizer that encodes as sentencepiece does: the model (BPE or unigram, byte fallback as
    trained), the model's normalization rules, and the dummy-prefix space on every piece."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from transformers.tokenization_utils_base import generate_merges

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = [(p.piece, p.score) for p in proto.pieces]
    byte_fallback = bool(trainer.byte_fallback)
    unk = sentencepiece.SentencePieceProcessor(model_file=model_file).unk_id()
    if trainer.model_type == sentencepiece_model_pb2.TrainerSpec.BPE:
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        model = models.BPE(vocab=vocab, merges=generate_merges(vocab), unk_token=pieces[unk][0], fuse_unk=True,
                           byte_fallback=byte_fallback, dropout=None)
    elif trainer.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        model = models.Unigram(pieces, unk_id=unk, byte_fallback=byte_fallback)
    else:
        raise ConversionError(f"{model_file}: a SentencePiece {trainer.ModelType.Name(trainer.model_type)} model; "
                              "the export converts BPE and unigram models only")
    backend = Tokenizer(model)
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    backend.normalizer = normalizers.Sequence(steps)
    decode = [decoders.Replace("▁", " ")] + ([decoders.ByteFallback()] if byte_fallback else []) + [decoders.Fuse()]
    if norm.add_dummy_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(decode)
    # Control pieces (<s>, </s>, <pad>) and user-defined ones are whole tokens; unknown too, as LLaMA ships it.
    kinds = (sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL,
             sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED,
             sentencepiece_model_pb2.ModelProto.SentencePiece.UNKNOWN)
    backend.add_tokens([AddedToken(p.piece, special=p.type != kinds[1], normalized=False)
                        for p in proto.pieces if p.type in kinds])
    return backend


def _prefix_every_piece(node):
    """Metaspace's prepend_scheme "first" -> "always", anywhere in a pre-tokenizer's JSON."""
    if isinstance(node, dict):
        if node.get("type") == "Metaspace" and node.get("prepend_scheme") == "first":
            node["prepend_scheme"] = "always"
        for value in node.values():
            _prefix_every_piece(value)
    elif isinstance(node, list):
        for value in node:
            _prefix_every_piece(value)


def _hf_backend(hf_tokenizer, every_piece: bool = True):
    """The backend tokenizer transformers built for the run (what the trainer encoded with), with every
    piece between special tokens prefixed as the trainer's per-piece encoding does (EVERY_PIECE; not for the
    "hf" chat format, which the trainer renders with transformers itself); None for a tokenizer with no
    tokenizers backend (a Python-only tokenizer)."""
    from tokenizers import Tokenizer

    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    if every_piece:
        _prefix_every_piece(spec.get("pre_tokenizer"))
    return Tokenizer.from_str(json.dumps(spec))


def _source_config(tokenizer) -> dict:
    """The HF source's tokenizer_config.json fields that still apply to the rebuilt tokenizer
    (model_max_length, clean_up_tokenization_spaces, ...)."""
    base = _base(tokenizer)
    path = os.path.join(base.path, "tokenizer_config.json") if base.path and os.path.isdir(base.path) else None
    if not path or not os.path.isfile(path):
        return {}
    with open(path) as f:
        config = json.load(f)
    dropped = ("tokenizer_class", "auto_map", "added_tokens_decoder", "chat_template", "bos_token", "eos_token",
               "unk_token", "pad_token", "add_bos_token", "add_eos_token", "legacy", "add_prefix_space",
               "additional_special_tokens", "extra_special_tokens", "tokenizer_file", "vocab_file", "backend")
    return {k: v for k, v in config.items() if k not in dropped}


def write_tokenizer(tokenizer, out: str, chat_template: str | None = None, every_piece: bool = True) -> list[str]:
    """OUT/tokenizer.json and tokenizer_config.json for the run's TOKENIZER (a SentencePieceTokenizer or
    HuggingFaceTokenizer, optionally wrapped with special tokens), plus tokenizer.model for a SentencePiece
    one (its base vocabulary, for SentencePiece users). Returns the names written. CHAT_TEMPLATE: None keeps
    an HF source's own template. EVERY_PIECE: see _hf_backend."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    base = _base(tokenizer)
    is_sp = hasattr(base, "_sp")
    backend = _sentencepiece_backend(base.path) if is_sp else _hf_backend(base._tok, every_piece)
    if backend is None:
        raise ConversionError(f"the tokenizer in {base.path} has no `tokenizers` backend; convert it to a fast "
                              "tokenizer (tokenizer.json) first")
    added = _added_ids(tokenizer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    wrong = {t: (backend.token_to_id(t), i) for t, i in added.items() if backend.token_to_id(t) != i}
    if wrong:
        raise ConversionError("the exported tokenizer would give the special tokens other ids than the trainer "
                              f"did (token: exported id, trained id): {wrong}; the base tokenizer in {base.path} "
                              "has gaps in its ids")
    names = {"bos_token": _piece(tokenizer, tokenizer.bos), "eos_token": _piece(tokenizer, tokenizer.eod),
             "pad_token": _piece(tokenizer, tokenizer.pad)}
    names["unk_token"] = base._sp.id_to_piece(base._sp.unk_id()) if is_sp else base._tok.unk_token
    config = {**_source_config(tokenizer), **{k: v for k, v in names.items() if v is not None}}
    if chat_template is None and not is_sp:  # no format given: the HF source's own template, if any, as a copy has
        chat_template = base._tok.chat_template if isinstance(base._tok.chat_template, str) else None
    os.makedirs(out, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=backend, **config).save_pretrained(out)
    for name in TEMPLATE_FILES:  # a template file would override tokenizer_config.json's
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    path = os.path.join(out, "tokenizer_config.json")
    with open(path) as f:
        saved = json.load(f)
    # The plain fast class: transformers then loads tokenizer.json as written (a model-specific class such as
    # LlamaTokenizer rebuilds the backend from the vocabulary with its own pre-tokenizer).
    saved["tokenizer_class"] = "PreTrainedTokenizerFast"
    saved.pop("chat_template", None)
    if chat_template is not None:
        saved["chat_template"] = chat_template
    with open(path, "w") as f:
        json.dump(saved, f, indent=2, ensure_ascii=False)
        f.write("\n")
    written = ["tokenizer.json", "tokenizer_config.json"]
    if is_sp:
        shutil.copy2(base.path, os.path.join(out, "tokenizer.model"))
        written.append("tokenizer.model")
    return written


# ---- generation_config.json ---------------------------------------------------------------------

def write_generation_config(out: str, eos: int, bos: int | None, pad: int | None) -> None:
    """generation_config.json (kept as the model layout wrote it, if it did) with generation ending at the
    chat format's end of reply, and the tokenizer's BOS and pad ids where it has them."""
    path = os.path.join(out, "generation_config.json")
    config = {}
    if os.path.isfile(path):
        with open(path) as f:
            config = json.load(f)
    config["eos_token_id"] = eos
    if bos is not None and bos >= 0:
        config["bos_token_id"] = bos
    if pad is not None and pad >= 0:
        config["pad_token_id"] = pad
    if "transformers_version" not in config:
        import transformers

        config["transformers_version"] = transformers.__version__
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


# ---- the check ----------------------------------------------------------------------------------

def _ids(encoded) -> list[int]:
    ids = encoded["input_ids"] if isinstance(encoded, Mapping) else encoded
    return [int(i) for i in ids]


def compare(tokenizer, out: str, chat_format=None) -> list[str]:
    """Where transformers' tokenizer in OUT differs from the trainer's: probe texts with the special tokens
    between them, and (with a chat format) a conversation's render()/render_prompt() against
    apply_chat_template(). Returns one line per difference (empty: none)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(out, local_files_only=True, trust_remote_code=False)  # a CrystalCoder config.json has auto_map: never prompt
    specials = list(_added_ids(tokenizer))
    texts = list(_PROBE_TEXTS)
    hf_format = chat_format is not None and chat_format.name == "hf"  # rendered by transformers in training too
    for i, token in enumerate([] if hf_format else specials):
        texts.append(f"{token}user\nHi there{specials[(i + 1) % len(specials)]} {_PROBE_TEXTS[i % 5]}{token}")
    problems = []

    def differs(what, expected, actual):
        if expected != actual:
            at = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
            problems.append(f"{what}: the trainer's ids {expected[max(0, at - 3):at + 5]} and transformers' "
                            f"{actual[max(0, at - 3):at + 5]} differ at token {at}")

    for text in texts:
        differs(f"text {text!r}", tokenizer.tokenize(text), _ids(hf(text, add_special_tokens=False)))
    if chat_format is not None:
        messages = list(SAMPLE_CONVERSATION)
        try:
            ids, _ = chat_format.render(messages, tokenizer)
        except ValueError:  # a format without a system turn
            messages = messages[1:]
            ids, _ = chat_format.render(messages, tokenizer)
        differs(f"the {chat_format.name} conversation", list(ids), _ids(hf.apply_chat_template(messages,
                                                                                               tokenize=True)))
        prompt = chat_format.render_prompt(messages[:-1], tokenizer)
        differs(f"the {chat_format.name} prompt", list(prompt), _ids(hf.apply_chat_template(
            messages[:-1], tokenize=True, add_generation_prompt=True)))
    return problems


# ---- the export step ----------------------------------------------------------------------------

class TokenizerExport:
    """The tokenizer part of an export, decided before any weight is written (a format the run's tokenizer
    cannot represent fails fast): planned from the checkpoint, then written into the output directory."""

    def __init__(self, root: str, args: dict, chat_format: str | None = None):
        """CHAT_FORMAT: a name of data/chat_formats.py, "none" for no template, None for the run's recorded
        --chat-format."""
        from megatron_ext.data.tokenizers import resolve_special_tokens

        self.root, self.args = root, args
        name = args.get("chat_format") if chat_format is None else chat_format
        self.name = None if name in NO_CHAT_FORMAT else name
        self.tokenizer = self.format = None
        if not self.name and not resolve_special_tokens(args.get("special_tokens")):
            return  # nothing added to the run's tokenizer: its files as they are (hf_files.export_tokenizer)
        self.tokenizer = run_tokenizer(root, args)
        if self.tokenizer is None:
            what = f"the chat format {self.name}" if self.name else f"the special tokens {args.get('special_tokens')}"
            raise ConversionError(
                f"the export needs the run's tokenizer for {what}, and the checkpoint's tokenizer "
                f"({args.get('tokenizer_type')} {args.get('tokenizer_model')}) is not available: put the tokenizer "
                "back at that path" + (", or pass --chat-format none" if self.name else ""))
        base = _base(self.tokenizer)
        if not hasattr(base, "_sp") and getattr(base._tok, "backend_tokenizer", None) is None:
            raise ConversionError(f"the tokenizer in {base.path} has no `tokenizers` backend (a Python-only "
                                  f"{type(base._tok).__name__}): the export cannot add special tokens or a chat "
                                  "template to it faithfully; convert it to a fast tokenizer (tokenizer.json) first")
        self.format = _chat_format(self.name, self.tokenizer) if self.name else None

    def write(self, out: str) -> None:
        """The tokenizer files, the chat template and generation_config.json's end token into OUT (after the
        model layout wrote config.json and generation_config.json)."""
        from megatron_ext.checkpoint.hf_files import export_tokenizer as copy_run_tokenizer

        tokenizer, fmt = self.tokenizer, self.format
        if tokenizer is None:
            copy_run_tokenizer(self.root, self.args, out)
            return
        every_piece = fmt is None or fmt.name != "hf"
        write_tokenizer(tokenizer, out, fmt.chat_template if fmt else None, every_piece)
        if fmt is not None:
            write_generation_config(out, end_of_reply_id(tokenizer, fmt), tokenizer.bos, tokenizer.pad)
        for problem in compare(tokenizer, out, fmt):
            print(f"warning: the exported tokenizer does not encode as the run's tokenizer did: {problem}",
                  file=sys.stderr)


def _chat_format(name: str, tokenizer):
    """data/chat_formats.py's format NAME, checked against the run's tokenizer: every token the format needs
    is one id (else the model never saw it as one: fine-tune with that --chat-format first)."""
    from megatron_ext.data.chat_formats import ChatFormatError, get_chat_format

    base = _base(tokenizer)
    try:
        fmt = get_chat_format(name, base.path if base.path and os.path.isdir(base.path) else None)
    except ChatFormatError as exc:
        raise ConversionError(str(exc)) from None
    missing = list(fmt.missing_tokens(tokenizer))
    if fmt.end_of_reply not in missing and end_of_reply_id(tokenizer, fmt) is None:
        missing.append(fmt.end_of_reply)
    if missing:
        raise ConversionError(f"the chat format {name} needs {', '.join(missing)} as single tokens, and the run's "
                              "tokenizer has no such token (the run had --special-tokens "
                              f"{','.join(_added_ids(tokenizer)) or 'none'}): export the checkpoint of a run "
                              f"fine-tuned with --chat-format {name}, or pass the format it was trained with")
    return fmt


def end_of_reply_id(tokenizer, fmt) -> int | None:
    """The id the trainer gave the format's end of reply: from the format's own split table (the strings it
    encodes as one id), else as the tokenizer encodes it alone."""
    from megatron_ext.data.chat_formats import token_ids

    table = token_ids(tokenizer)
    return table[fmt.end_of_reply] if fmt.end_of_reply in table else token_id(tokenizer, fmt.end_of_reply)
