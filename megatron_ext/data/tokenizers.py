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

TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer", "NullTokenizer")
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

    def apply_chat_template(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} is for pretraining; no chat template")


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
        if eos is None:
            raise ValueError(f"Hugging Face tokenizer {self.path} has no eos_token to use as EOD")
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


def build_tokenizer(tokenizer_type: str, tokenizer_model: str | None,
                    vocab_size: int | None = None) -> _Tokenizer:
    """Build a tokenizer from Megatron-LM-style flags.

    vocab_size is only used by NullTokenizer; the others take it from the model.
    """
    if tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(tokenizer_model)
    if tokenizer_type == "HuggingFaceTokenizer":
        return HuggingFaceTokenizer(tokenizer_model)
    if tokenizer_type == "NullTokenizer":
        return NullTokenizer(vocab_size)
    raise ValueError(f"--tokenizer-type {tokenizer_type!r} unknown; choose from {TOKENIZER_TYPES}")


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
