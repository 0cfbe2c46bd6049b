"""JSONL -> indexed dataset: content, determinism across workers, safety checks."""

import importlib.util
import json
import os
from pathlib import Path

import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ext.data.preprocess import PreprocessError, preprocess_jsonl
from megatron_ext.data.tokenizers import build_tokenizer, train_sentencepiece

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "data" / "corpus"


def _docs(name, start, stop):
    with open(CORPUS / name, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][start:stop]


def _write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small SentencePiece model and a JSONL of English + code documents."""
    d = tmp_path_factory.mktemp("pre")
    texts = _docs("english.jsonl", 0, 40) + _docs("code.jsonl", 0, 12)
    train_src = _write_jsonl(d / "train.jsonl", [{"text": t} for t in texts])
    model = train_sentencepiece([train_src], str(d / "tok"), vocab_size=1000)
    # A blank line and an empty document, which must not become documents.
    records = [{"text": t, "title": t.split("\n", 1)[0]} for t in texts[:30]]
    records.insert(5, {"text": "", "title": ""})
    src = _write_jsonl(d / "docs.jsonl", records)
    with open(src, "a") as f:
        f.write("\n")
    return {"model": model, "input": src, "texts": [r["text"] for r in records if r["text"]],
            "records": [r for r in records if r["text"]]}


def _run(setup, prefix, **kw):
    kw.setdefault("append_eod", True)
    return preprocess_jsonl(setup["input"], str(prefix), tokenizer_type="SentencePieceTokenizer",
                            tokenizer_model=setup["model"], progress=False, **kw)


def test_output_equals_direct_tokenization_plus_eod(setup, tmp_path):
    prefixes, stats = _run(setup, tmp_path / "out", workers=1)
    assert prefixes == {"text": str(tmp_path / "out_text_document")}
    assert stats.documents == len(setup["texts"]) and stats.skipped_empty == 1

    tok = build_tokenizer("SentencePieceTokenizer", setup["model"])
    ds = IndexedDataset(prefixes["text"])
    assert ds.index.dtype == numpy.uint16  # smallest dtype for a 1000-token vocabulary
    assert len(ds) == len(setup["texts"])
    assert list(ds.document_indices) == list(range(len(setup["texts"]) + 1))
    for i, text in enumerate(setup["texts"]):
        assert ds[i].tolist() == tok.tokenize(text) + [tok.eod]
    assert stats.tokens == int(ds.sequence_lengths.sum())


def test_output_is_byte_identical_across_worker_counts(setup, tmp_path):
    """Several of the workers' 256-record batches (and more than one batch in flight per worker), so an
    out-of-order merge of the batches would show; the records are distinct, so would any reordering."""
    from megatron_ext.data import preprocess

    n = 5 * preprocess._BATCH_RECORDS + 37
    pieces = [p for t in setup["texts"] for p in t.split("\n") if p.strip()]
    src = _write_jsonl(tmp_path / "many.jsonl", [{"text": f"{i} {pieces[i % len(pieces)][:120]}"} for i in range(n)])
    outputs = {}
    for workers in (1, 2, 3):
        prefixes, stats = preprocess_jsonl(src, str(tmp_path / f"w{workers}"), tokenizer_type="SentencePieceTokenizer",
                                           tokenizer_model=setup["model"], append_eod=True, progress=False,
                                           workers=workers)
        assert stats.documents == n
        outputs[workers] = {ext: Path(prefixes["text"] + ext).read_bytes() for ext in (".bin", ".idx")}
    for workers in (2, 3):
        for ext in (".bin", ".idx"):
            assert outputs[workers][ext] == outputs[1][ext], f"{workers} workers: {ext} differs from 1 worker"
    # And the single-worker output is the input order: document i starts with the number i.
    tok = build_tokenizer("SentencePieceTokenizer", setup["model"])
    ds = IndexedDataset(str(tmp_path / "w1_text_document"))
    for i in (0, 255, 256, 700, n - 1):
        assert tok.detokenize(ds[i].tolist()[:-1]).split(" ", 1)[0] == str(i)


def test_one_output_per_json_key(setup, tmp_path):
    prefixes, _ = _run(setup, tmp_path / "multi", json_keys=["text", "title"], append_eod=False)
    assert set(prefixes) == {"text", "title"}
    tok = build_tokenizer("SentencePieceTokenizer", setup["model"])
    titles = IndexedDataset(prefixes["title"])
    assert titles[0].tolist() == tok.tokenize(setup["records"][0]["title"])


def test_refuses_to_overwrite_unless_asked(setup, tmp_path):
    prefixes, _ = _run(setup, tmp_path / "o", append_eod=False)
    bin_path = prefixes["text"] + ".bin"
    before = Path(bin_path).read_bytes()
    with pytest.raises(PreprocessError, match="already exists.*--overwrite"):
        _run(setup, tmp_path / "o")
    assert Path(bin_path).read_bytes() == before
    _run(setup, tmp_path / "o", overwrite=True)  # now with EOD: one more token per doc
    assert len(Path(bin_path).read_bytes()) == len(before) + 2 * len(setup["texts"])


def test_missing_key_fails_clearly_and_leaves_nothing(setup, tmp_path):
    with pytest.raises(PreprocessError, match=r"docs\.jsonl:1: no key 'body'.*--json-keys"):
        _run(setup, tmp_path / "k", json_keys=["body"], workers=2)
    assert os.listdir(tmp_path) == []
    with pytest.raises(PreprocessError, match="--input .* not found"):
        preprocess_jsonl(str(tmp_path / "none.jsonl"), str(tmp_path / "x"),
                         tokenizer_type="NullTokenizer", vocab_size=10)


def test_large_vocabulary_uses_int32(tmp_path):
    src = _write_jsonl(tmp_path / "ids.jsonl", [{"text": "1 69999 5"}, {"text": "7"}])
    prefixes, _ = preprocess_jsonl(src, str(tmp_path / "n"), tokenizer_type="NullTokenizer",
                                   vocab_size=70000, append_eod=True, progress=False)
    ds = IndexedDataset(prefixes["text"])
    assert ds.index.dtype == numpy.int32
    assert [d.tolist() for d in ds] == [[1, 69999, 5, 70000], [7, 70000]]


def test_preprocess_cli(setup, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("preprocess_data",
                                                  REPO / "tools" / "preprocess_data.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = ["--input", setup["input"], "--output-prefix", str(tmp_path / "c"),
            "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", setup["model"],
            "--append-eod", "--workers", "2", "--no-progress"]
    assert cli.main(args) == 0
    assert f"--data-path {tmp_path / 'c_text_document'}" in capsys.readouterr().out
    assert IndexedDataset.exists(str(tmp_path / "c_text_document"))
    assert cli.main(args) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    bad_model = args[:7] + [str(tmp_path / "missing.model")] + args[8:]
    assert cli.main(bad_model + ["--overwrite"]) == 2
    assert "--tokenizer-model" in capsys.readouterr().err
