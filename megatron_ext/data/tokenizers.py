"""Tokenizers for preprocessing and for megatron-core's GPT datasets.

``GPTDatasetConfig.tokenizer`` is typed as megatron-core's ``MegatronTokenizerBase``
(megatron/core/tokenizers/base_tokenizer.py); the datasets read ``.eod``, ``.pad``
and ``.vocab_size`` from it, and hash ``.unique_identifiers`` into the names of
their cached index files.  Our classes subclass that base directly instead of
going through ``MegatronTokenizer.from_pretrained`` because that path wants a
metadata.json next to every model file.

Conventions shared by all tokenizers here:
  * ``tokenize`` adds no BOS/EOS; preprocessing appends EOD between documents.
  * ``eod`` is the end-of-document id (the EOS id for SentencePiece/HF models).
  * an id the vocabulary does not have (no pad, no bos) is -1, which is also
    megatron-core's "no pad token" sentinel (megatron_dataset._PAD_TOKEN_ID).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import OrderedDict
from typing import Iterable, Iterator, Sequence

from megatron.core.tokenizers import MegatronTokenizerBase

TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer", "NullTokenizer", "Llama2Tokenizer")
# Megatron-LM's Llama2Tokenizer is a SentencePiece model file (LLaMA-2's tokenizer.model): the same class here.
TOKENIZER_ALIASES = {"Llama2Tokenizer": "SentencePieceTokenizer"}
NO_ID = -1


def _missing_model_error(model: str | None, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"--tokenizer-model {model} not found: {what}. Train one with "
        f"tools/train_tokenizer.py, or point --tokenizer-model at an existing one."
    )


def _fingerprint(paths: Iterable[str]) -> str:
    """Short content hash, so that a retrained tokenizer saved at the same path
    does not silently reuse dataset index caches built with the old one."""
    h = hashlib.sha256()
    for path in paths:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


class _Tokenizer(MegatronTokenizerBase):
    """Common surface: vocab_size, eod, pad, bos, eos, tokenize, detokenize."""

    def __init__(self, path: str | None, fingerprint: str) -> None:
        super().__init__(path, config={})
        self._fingerprint = fingerprint

    @property
    def unique_identifiers(self) -> OrderedDict:
        # Serialised by megatron-core into each dataset's description/cache key.
        return OrderedDict(
            [("class", type(self).__name__), ("tokenizer_path", self.path),
             ("fingerprint", self._fingerprint)]
        )

    @property
    def eos(self) -> int:
        return self.eod

    def apply_chat_template(self, *args, **kwargs):  # abstract in megatron-core's tokenizer base
        raise NotImplementedError(f"{type(self).__name__} is for pretraining; no chat template")

    # A fragment is a piece cut out of a document (fill-in-the-middle cuts text at character
    # positions): it must round-trip exactly, so that the pieces of a document decode and join to
    # the document. The default tokenize/detokenize already do for byte-level tokenizers.
    def tokenize_fragment(self, text: str) -> list[int]:
        return self.tokenize(text)

    def detokenize_fragment(self, ids: Sequence[int]) -> str:
        return self.detokenize(ids)


class SentencePieceTokenizer(_Tokenizer):
    """A SentencePiece ``.model`` file (e.g. from :func:`train_sentencepiece`, or LLaMA's)."""

    def __init__(self, model_file: str) -> None:
        import sentencepiece

        if not model_file or not os.path.isfile(model_file):
            raise _missing_model_error(model_file, "no such SentencePiece .model file")
        super().__init__(model_file, _fingerprint([model_file]))
        self._sp = sentencepiece.SentencePieceProcessor(model_file=model_file)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def vocab(self) -> dict[str, int]:
        return {self._sp.id_to_piece(i): i for i in range(self.vocab_size)}

    @property
    def eod(self) -> int:
        eos = self._sp.eos_id()
        if eos < 0:
            raise ValueError(f"SentencePiece model {self.path} has no EOS piece to use as EOD")
        return eos

    @property
    def pad(self) -> int:
        return self._sp.pad_id()  # -1 when the model defines no pad piece

    @property
    def bos(self) -> int:
        return self._sp.bos_id()

    def tokenize(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    @property
    def _fragment_sp(self):
        """The same model without the dummy-prefix space (which encode adds before the text and
        decode strips from the first piece) and without whitespace clean-up: a fragment such as
        "dd(a, " then encodes to exactly its own characters, and decodes back with its spaces."""
        if getattr(self, "_fragment_processor", None) is None:
            import sentencepiece
            from sentencepiece import sentencepiece_model_pb2

            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(self._sp.serialized_model_proto())
            proto.normalizer_spec.add_dummy_prefix = False
            proto.normalizer_spec.remove_extra_whitespaces = False
            self._fragment_processor = sentencepiece.SentencePieceProcessor(
                model_proto=proto.SerializeToString())
        return self._fragment_processor

    def tokenize_fragment(self, text: str) -> list[int]:
        return self._fragment_sp.encode(text)

    def detokenize_fragment(self, ids: Sequence[int]) -> str:
        return self._fragment_sp.decode([int(i) for i in ids])


class HuggingFaceTokenizer(_Tokenizer):
    """Anything ``transformers.AutoTokenizer`` loads without network access:
    a local directory, or a hub name already in the local cache."""

    # Files that define a tokenizer (model weights in the same folder are skipped
    # when fingerprinting: hashing gigabytes would only slow start-up).
    _TOKENIZER_FILE_SUFFIXES = (".json", ".model", ".txt", ".tiktoken", ".vocab")

    def __init__(self, name_or_path: str) -> None:
        if not name_or_path:
            raise _missing_model_error(name_or_path, "HuggingFaceTokenizer needs a directory")
        from transformers import AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise _missing_model_error(
                name_or_path,
                "not a tokenizer directory nor a name in the local Hugging Face cache "
                f"(no network download is attempted; underlying error: {err})",
            ) from err
        if os.path.isdir(name_or_path):
            files = sorted(
                os.path.join(name_or_path, f) for f in os.listdir(name_or_path)
                if f.endswith(self._TOKENIZER_FILE_SUFFIXES)
                and os.path.isfile(os.path.join(name_or_path, f))
            )
            fingerprint = _fingerprint(files)
        else:
            fingerprint = hashlib.sha256(
                json.dumps(self._tok.get_vocab(), sort_keys=True).encode()).hexdigest()[:16]
        super().__init__(name_or_path, fingerprint)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)  # includes added special tokens, unlike .vocab_size

    @property
    def vocab(self) -> dict[str, int]:
        return self._tok.get_vocab()

    @property
    def eod(self) -> int:
        eos = self._tok.eos_token_id
        if eos is None:  # a bare tokenizer.json (GPT-NeoX's, as DCLM ships it) names no eos: its document end
            eos = self._tok.get_vocab().get("<|endoftext|>")
        if eos is None:
            raise ValueError(f"Hugging Face tokenizer {self.path} has no eos_token (nor <|endoftext|>) to use as "
                             "EOD: add eos_token to its tokenizer_config.json")
        return eos

    @property
    def pad(self) -> int:
        pad = self._tok.pad_token_id
        return NO_ID if pad is None else pad

    @property
    def bos(self) -> int:
        bos = self._tok.bos_token_id
        return NO_ID if bos is None else bos

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def detokenize(self, ids: Sequence[int]) -> str:
        # No clean-up of spaces before punctuation: decode(encode(x)) should be x.
        return self._tok.decode([int(i) for i in ids], clean_up_tokenization_spaces=False)

    def tokenize_fragment(self, text: str) -> list[int]:
        return self._encode_after(self._fragment_anchor(), text)

    def detokenize_fragment(self, ids: Sequence[int]) -> str:
        return self._decode_after(self._fragment_anchor(), ids)

    def _encode_after(self, anchor, text: str) -> list[int]:
        if anchor is None:
            return self.tokenize(text)
        return self._tok.encode(anchor[0] + text, add_special_tokens=False)[1:]

    def _decode_after(self, anchor, ids: Sequence[int]) -> str:
        if anchor is None:
            return self.detokenize(ids)
        return self.detokenize([anchor[1], *ids])[len(anchor[0]):]

    def _fragment_anchor(self):
        """None when pieces of a text tokenize and join back exactly as they are (byte-level BPE).
        Otherwise (HF LLaMA tokenizers, which mark the start of a text with a "▁" space like
        SentencePiece) a special token (text, id) put before each piece, so the piece is tokenized and
        decoded as the continuation it is. Found once, by trying."""
        if not hasattr(self, "_anchor"):
            head, tail = "def ad", "d(x,  y)"  # a cut inside a word, then a run of spaces

            def joins(anchor) -> bool:
                pieces = self._encode_after(anchor, head) + self._encode_after(anchor, tail)
                return (self._decode_after(anchor, pieces) == head + tail
                        and self._decode_after(anchor, self._encode_after(anchor, " " + tail)) == " " + tail)

            candidates = [None] + [(token, ids[0]) for token in (self._tok.eos_token, self._tok.bos_token) if token
                                   for ids in [self._tok.encode(token, add_special_tokens=False)] if len(ids) == 1]
            working = [anchor for anchor in candidates if joins(anchor)]
            if not working:
                raise ValueError(f"Hugging Face tokenizer {self.path} cannot re-encode pieces of a text exactly "
                                 "(needed for character-level fill-in-the-middle): use --fim-split token")
            self._anchor = working[0]
        return self._anchor


class NullTokenizer(_Tokenizer):
    """Text is already token ids, e.g. "5 17 3".  For tests and synthetic data.

    As in Megatron-LM, ids are 0..vocab_size-1 and EOD is the extra id
    ``vocab_size``, so ``.vocab_size`` is ``vocab_size + 1``.
    """

    def __init__(self, vocab_size: int | None) -> None:
        if vocab_size is None or int(vocab_size) <= 0:
            raise ValueError("NullTokenizer needs a positive vocab_size (--vocab-size)")
        super().__init__(None, f"null-{int(vocab_size)}")
        self._n = int(vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._n + 1

    @property
    def vocab(self) -> dict[str, int]:
        return {str(i): i for i in range(self.vocab_size)}

    @property
    def eod(self) -> int:
        return self._n

    @property
    def pad(self) -> int:
        return NO_ID

    @property
    def bos(self) -> int:
        return NO_ID

    def tokenize(self, text: str) -> list[int]:
        ids = [int(tok) for tok in text.split()]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"NullTokenizer ids {bad[:5]} are outside [0, {self.vocab_size})")
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)


# LLM360 Crystal's additions to the LLaMA vocabulary, at ids 32000-32021 in this
# order; the vocabulary is then padded to 32032 (a multiple of 32).
CRYSTAL_SPECIAL_TOKENS = (
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|filename|>",
    "<|gh_stars|>", "<|issue_start|>", "<|issue_comment|>", "<|issue_closed|>",
    "<|jupyter_start|>", "<|jupyter_text|>", "<|jupyter_code|>", "<|jupyter_output|>",
    "<|empty_output|>", "<|commit_before|>", "<|commit_msg|>", "<|commit_after|>",
    "<|reponame|>", "<|im_start|>", "<|im_end|>", "<|sys_start|>", "<|sys_end|>",
)
SPECIAL_TOKEN_SETS = {"crystal": CRYSTAL_SPECIAL_TOKENS}
# Default padding multiple with added special tokens: 32000 + 22 -> 32032 as Crystal.
SPECIAL_TOKENS_PAD_MULTIPLE = 32


def resolve_special_tokens(spec) -> tuple[str, ...]:
    """"crystal", a comma-separated list, or a sequence of token strings."""
    if not spec:
        return ()
    if isinstance(spec, str):
        if spec in SPECIAL_TOKEN_SETS:
            return SPECIAL_TOKEN_SETS[spec]
        spec = [t for t in spec.split(",") if t]
    tokens = tuple(spec)
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"--special-tokens has duplicates: {tokens}")
    return tokens


class SpecialTokensTokenizer(_Tokenizer):
    """A base tokenizer plus special tokens whose ids continue after its vocabulary,
    and a vocabulary padded to ``vocab_size`` (unused ids at the end).

    A special token written in text is encoded as its single id (the text between
    specials goes through the base tokenizer), so preprocessing and chat data see
    exactly what the model's embedding rows are.  The reported ``vocab_size`` is
    the padded one, so the model's embedding matches the tokenizer Crystal used.
    """

    def __init__(self, base: _Tokenizer, special_tokens, vocab_size: int | None = None,
                 pad_multiple: int = SPECIAL_TOKENS_PAD_MULTIPLE) -> None:
        import re

        tokens = resolve_special_tokens(special_tokens)
        base_vocab = base.vocab_size
        # A token the base vocabulary already has (e.g. a HF tokenizer saved with
        # them) keeps its id instead of getting a second one.
        known = base.vocab if isinstance(base, HuggingFaceTokenizer) else {}
        self.special_token_ids = {}
        next_id = base_vocab
        for t in tokens:
            if t in known:
                self.special_token_ids[t] = known[t]
            else:
                self.special_token_ids[t] = next_id
                next_id += 1
        needed = next_id
        if vocab_size is None:
            vocab_size = -(-needed // pad_multiple) * pad_multiple if tokens else needed
        if vocab_size < needed:
            raise ValueError(f"--vocab-pad-to {vocab_size} is smaller than the {base_vocab} base "
                             f"ids plus {needed - base_vocab} special tokens ({needed})")
        # The dataset cache key must change when the specials or padding do.
        specials_hash = hashlib.sha256("|".join(tokens).encode()).hexdigest()[:8]
        super().__init__(base.path, f"{base._fingerprint}+{specials_hash}+{vocab_size}")
        self.base, self._vocab_size = base, int(vocab_size)
        self._id_to_token = {i: t for t, i in self.special_token_ids.items()}
        # Longest first, so a token that is a prefix of another does not win.
        alternatives = sorted(self.special_token_ids, key=len, reverse=True)
        self._pattern = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")") if tokens else None

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def vocab(self) -> dict[str, int]:
        return {**self.base.vocab, **self.special_token_ids}

    @property
    def eod(self) -> int:
        return self.base.eod

    @property
    def pad(self) -> int:
        return self.base.pad

    @property
    def bos(self) -> int:
        return self.base.bos

    def tokenize(self, text: str) -> list[int]:
        return self._tokenize(text, self.base.tokenize)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._detokenize(ids, self.base.detokenize)

    def tokenize_fragment(self, text: str) -> list[int]:
        return self._tokenize(text, self.base.tokenize_fragment)

    def detokenize_fragment(self, ids: Sequence[int]) -> str:
        return self._detokenize(ids, self.base.detokenize_fragment)

    def _tokenize(self, text: str, encode) -> list[int]:
        if self._pattern is None:
            return encode(text)
        ids: list[int] = []
        for i, piece in enumerate(self._pattern.split(text)):
            if i % 2:  # odd pieces are the captured special tokens
                ids.append(self.special_token_ids[piece])
            elif piece:
                ids.extend(encode(piece))
        return ids

    def _detokenize(self, ids: Sequence[int], decode) -> str:
        out, run = [], []
        for i in (int(i) for i in ids):
            if i in self._id_to_token:
                if run:
                    out.append(decode(run))
                    run = []
                out.append(self._id_to_token[i])
            elif i >= self.base.vocab_size:
                raise ValueError(f"id {i} is vocabulary padding: no token to decode")
            else:
                run.append(i)
        if run:
            out.append(decode(run))
        return "".join(out)


def build_tokenizer(tokenizer_type: str, tokenizer_model: str | None,
                    vocab_size: int | None = None, special_tokens=None,
                    vocab_pad_to: int | None = None) -> _Tokenizer:
    """Build a tokenizer from Megatron-LM-style flags.

    vocab_size is only used by NullTokenizer; the others take it from the model.
    special_tokens ("crystal", "a,b", or a list) are added after the base
    vocabulary; the vocabulary is then padded to vocab_pad_to ids, by default to
    the next multiple of 32 (32000 + 22 Crystal tokens -> 32032).
    """
    tokenizer_type = TOKENIZER_ALIASES.get(tokenizer_type, tokenizer_type)
    if tokenizer_type == "SentencePieceTokenizer":
        base = SentencePieceTokenizer(tokenizer_model)
    elif tokenizer_type == "HuggingFaceTokenizer":
        base = HuggingFaceTokenizer(tokenizer_model)
    elif tokenizer_type == "NullTokenizer":
        base = NullTokenizer(vocab_size)
    else:
        raise ValueError(f"--tokenizer-type {tokenizer_type!r} unknown; choose from {TOKENIZER_TYPES}")
    if special_tokens or vocab_pad_to:
        return SpecialTokensTokenizer(base, special_tokens, vocab_pad_to)
    return base


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------

# SentencePiece skips training "sentences" longer than max_sentence_length, so
# documents are fed in chunks of whole lines; newlines stay inside the chunks,
# which lets code indentation and line breaks be learnt as pieces.
_TRAIN_CHUNK_CHARS = 2000


def _training_chunks(jsonl_paths: Sequence[str], json_key: str) -> Iterator[str]:
    for path in jsonl_paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                doc = json.loads(line)
                if json_key not in doc:
                    raise KeyError(f"{path}:{lineno}: no key {json_key!r} (has {sorted(doc)})")
                buf = ""
                for piece in doc[json_key].splitlines(keepends=True):
                    buf += piece
                    if len(buf) >= _TRAIN_CHUNK_CHARS:
                        yield buf
                        buf = ""
                if buf.strip():
                    yield buf


def train_sentencepiece(jsonl_paths: Sequence[str], model_prefix: str, vocab_size: int,
                        json_key: str = "text", *, num_threads: int | None = None,
                        max_sentences: int = 0) -> str:
    """Train a LLaMA-style BPE SentencePiece model on JSONL documents.

    Writes ``{model_prefix}.model`` and ``{model_prefix}.vocab`` (one
    "piece<TAB>score" line per id, with \\n, \\t, \\r and \\\\ escaped) atomically
    (temporary file, then rename) and returns the .model path.

    Settings follow LLaMA's tokenizer so that decode(encode(text)) == text:
    identity normalisation, whitespace kept as is, digits split, unknown
    characters fall back to their UTF-8 bytes.  Special ids: unk=0, bos=1,
    eos=2 (used as EOD), pad=3 (a distinct pad keeps megatron-core's
    pad-masking unambiguous).  ``max_sentences`` > 0 samples that many
    training chunks (useful on large corpora).
    """
    import sentencepiece

    for path in jsonl_paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer training input {path} not found")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=_training_chunks(jsonl_paths, json_key),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        max_sentence_length=1 << 16,  # bytes; one long paragraph can exceed a chunk
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=2,  # warnings and errors only
    )
    sp = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    # Human-readable "piece<TAB>score" lines; pieces may contain newlines or
    # tabs (code), which are backslash-escaped to keep one line per piece.
    escape = str.maketrans({"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"})
    vocab_text = "".join(f"{sp.id_to_piece(i).translate(escape)}\t{sp.get_score(i):g}\n"
                         for i in range(sp.get_piece_size()))

    out_dir = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(out_dir, exist_ok=True)
    _atomic_write(f"{model_prefix}.vocab", vocab_text.encode("utf-8"))
    _atomic_write(f"{model_prefix}.model", model.getvalue())
    return f"{model_prefix}.model"


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
