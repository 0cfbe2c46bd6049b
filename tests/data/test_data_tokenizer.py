"""Tokenizers: SentencePiece training on the bundled corpus, HF and Null tokenizers."""

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

from megatron_ext.data.tokenizers import build_tokenizer, train_sentencepiece

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "data" / "corpus"


def _docs(name, start, stop):
    with open(CORPUS / name, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][start:stop]


def _write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return str(path)


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A 1000-piece BPE model trained on a slice of both corpus files."""
    d = tmp_path_factory.mktemp("sp")
    texts = _docs("english.jsonl", 0, 60) + _docs("code.jsonl", 0, 12)
    src = _write_jsonl(d / "slice.jsonl", texts)
    return train_sentencepiece([src], str(d / "tok"), vocab_size=1000)


def test_corpus_is_bundled_and_sized():
    sizes = [os.path.getsize(CORPUS / n) for n in ("english.jsonl", "code.jsonl")]
    assert 1_000_000 <= sum(sizes) <= 4_200_000
    # PROVENANCE.md's table describes these files: its document counts are theirs.
    provenance = (CORPUS / "PROVENANCE.md").read_text()
    for name in ("english.jsonl", "code.jsonl"):
        documents = int(re.search(rf"^\| `{re.escape(name)}` \| (\d+) \|", provenance, re.M)[1])
        assert documents == len((CORPUS / name).read_text().splitlines()), name
    for name in ("english.jsonl", "code.jsonl"):
        docs = _docs(name, 0, None)
        assert len(docs) > 50 and all(isinstance(t, str) and t for t in docs)


def test_sentencepiece_round_trips_held_out_text(sp_model):
    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    assert tok.vocab_size == 1000
    assert (tok.bos, tok.eod, tok.eos, tok.pad) == (1, 2, 2, 3)
    held_out = _docs("english.jsonl", 200, 205) + _docs("code.jsonl", 100, 103) + [
        "  leading spaces, tabs\there, unicode: naïve café — “quotes” 漢字 🙂\n\n",
        "",
    ]
    for text in held_out:
        ids = tok.tokenize(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.eod not in ids and tok.bos not in ids  # no specials added by tokenize
        assert tok.detokenize(ids) == text
    # It learnt merges: English compresses well below one token per character.
    english = held_out[0]
    assert len(tok.tokenize(english)) < 0.45 * len(english)


def test_tokenizer_is_a_megatron_core_tokenizer(sp_model):
    from megatron.core.tokenizers import MegatronTokenizerBase

    tok = build_tokenizer("SentencePieceTokenizer", sp_model)
    assert isinstance(tok, MegatronTokenizerBase)
    # megatron-core hashes this into dataset cache names: must be JSON-serialisable.
    json.dumps(tok.unique_identifiers)
    assert tok.vocab["<pad>"] == 3


def test_train_writes_model_and_vocab_without_leftovers(sp_model):
    d = os.path.dirname(sp_model)
    assert sorted(f for f in os.listdir(d) if f.startswith("tok")) == ["tok.model", "tok.vocab"]
    with open(os.path.join(d, "tok.vocab"), encoding="utf-8") as f:
        assert len(f.read().rstrip("\n").split("\n")) == 1000


def test_missing_tokenizer_model_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match=r"--tokenizer-model .*nope\.model not found"):
        build_tokenizer("SentencePieceTokenizer", missing)
    with pytest.raises(FileNotFoundError, match="--tokenizer-model"):
        build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "no_dir"))
    with pytest.raises(ValueError, match="--tokenizer-type"):
        build_tokenizer("GPT2BPETokenizer", None)


def test_null_tokenizer():
    tok = build_tokenizer("NullTokenizer", None, vocab_size=100)
    assert tok.vocab_size == 101 and tok.eod == 100 and tok.pad == -1
    assert tok.tokenize("5 17\n3") == [5, 17, 3]
    assert tok.detokenize([5, 17, 3]) == "5 17 3"
    with pytest.raises(ValueError, match="outside"):
        tok.tokenize("5 1000")
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer("NullTokenizer", None)


def test_huggingface_tokenizer_from_local_directory(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_docs("english.jsonl", 0, 30), trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(
        str(tmp_path / "hf"))

    tok = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "hf"))
    assert tok.vocab_size == 600 and tok.eod == 0 and tok.pad == -1 and tok.bos == -1
    text = _docs("english.jsonl", 300, 301)[0] + " ünï 🙂  two  spaces ,x ."
    ids = tok.tokenize(text)
    assert tok.eod not in ids
    assert tok.detokenize(ids) == text
    # Byte-level BPE marks no start of text: a piece of a document is encoded as it is.
    assert tok.tokenize_fragment("dd(a,  b") == tok.tokenize("dd(a,  b")
    assert tok.detokenize_fragment(tok.tokenize_fragment(" two")) == " two"


def test_train_tokenizer_cli(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "in.jsonl", _docs("code.jsonl", 0, 10))
    cli = _load_tool("train_tokenizer")
    assert cli.main(["--input", src, "--model-prefix", str(tmp_path / "t"),
                     "--vocab-size", "500"]) == 0
    assert "vocab 500" in capsys.readouterr().out
    assert build_tokenizer("SentencePieceTokenizer", str(tmp_path / "t.model")).vocab_size == 500
    assert cli.main(["--input", str(tmp_path / "missing.jsonl"), "--model-prefix",
                     str(tmp_path / "u"), "--vocab-size", "500"]) == 2
    assert "not found" in capsys.readouterr().err
