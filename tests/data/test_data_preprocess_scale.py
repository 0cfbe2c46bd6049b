"""Preprocessing at scale: input formats, bad records, --strict, worker-count identity,
and special tokens (Crystal's 22) in the tokenizer and in preprocessing."""

import gzip
import importlib.util
import json
import re
from pathlib import Path

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ext.data.preprocess import PreprocessError, preprocess_jsonl
from megatron_ext.data.tokenizers import (CRYSTAL_SPECIAL_TOKENS, build_tokenizer,
                                          train_sentencepiece)

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "data" / "corpus"


def _texts(name, n):
    with open(CORPUS / name, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][:n]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    src = d / "train.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n"
                           for t in _texts("english.jsonl", 40) + _texts("code.jsonl", 10)))
    return train_sentencepiece([str(src)], str(d / "tok"), vocab_size=1000)


def _null(src, prefix, **kw):
    kw = {"tokenizer_type": "NullTokenizer", "vocab_size": 100, "append_eod": True,
          "progress": False, **kw}
    return preprocess_jsonl(str(src), str(prefix), **kw)


def _docs(prefix):
    return [d.tolist() for d in IndexedDataset(prefix)]


RECORDS = [{"text": f"{i % 90} {(i * 7) % 90} {i % 13}"} for i in range(1000)]


def test_gzip_and_parquet_inputs_give_the_jsonl_output(tmp_path):
    import pyarrow as pa  # a test dependency (requirements/ci.txt): parquet input must be tested, not skipped
    import pyarrow.parquet as pq

    lines = "".join(json.dumps(r) + "\n" for r in RECORDS)
    (tmp_path / "d.jsonl").write_text(lines)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write(lines)
    pq.write_table(pa.table({"text": [r["text"] for r in RECORDS]}), tmp_path / "d.parquet",
                   row_group_size=300)
    outputs = {}
    for name, workers in (("d.jsonl", 1), ("d.jsonl.gz", 2), ("d.parquet", 2)):
        prefixes, stats = _null(tmp_path / name, tmp_path / name.replace(".", "_"), workers=workers)
        assert stats.documents == len(RECORDS)
        outputs[name] = (Path(prefixes["text"] + ".bin").read_bytes(),
                         Path(prefixes["text"] + ".idx").read_bytes())
    assert outputs["d.jsonl"] == outputs["d.jsonl.gz"] == outputs["d.parquet"]
    assert _docs(str(tmp_path / "d_jsonl_text_document"))[7] == [7, 49, 7, 100]


def test_bad_records_are_counted_with_line_numbers_and_strict_is_fatal(tmp_path):
    src = tmp_path / "bad.jsonl"
    good = [json.dumps(r) for r in RECORDS[:600]]
    good[9] = "{not json"  # line 10
    good[99] = json.dumps({"body": "1 2"})  # line 100
    good[299] = json.dumps({"text": ""})  # line 300
    good[399] = json.dumps({"text": None})  # line 400
    src.write_text("\n".join(good) + "\n")
    for workers in (1, 2):
        prefixes, stats = _null(src, tmp_path / f"w{workers}", workers=workers)
        assert (stats.documents, stats.bad, stats.skipped_empty) == (596, 3, 1)
        assert [n for n, _ in stats.problems] == [10, 100, 300, 400]
        assert "JSON" in stats.problems[0][1] and "'text'" in stats.problems[1][1]
    a, b = (Path(str(tmp_path / f"w{w}_text_document.bin")).read_bytes() for w in (1, 2))
    assert a == b
    with pytest.raises(PreprocessError, match=r"bad\.jsonl:10: not valid JSON.*--strict"):
        _null(src, tmp_path / "s", strict=True, workers=2)
    assert not list(tmp_path.glob("s_*"))


def test_cli_reports_bad_lines(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("preprocess_data",
                                                  REPO / "tools" / "preprocess_data.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    src = tmp_path / "c.jsonl"
    src.write_text('{"text": "1 2"}\n[1]\n{"text": "3"}\n')
    base = ["--input", str(src), "--output-prefix", str(tmp_path / "c"), "--tokenizer-type",
            "NullTokenizer", "--vocab-size", "10", "--no-progress"]
    assert cli.main(base) == 0
    captured = capsys.readouterr()
    assert "1 bad records" in captured.out and f"{src}:2: not a JSON object" in captured.err
    assert cli.main(base + ["--overwrite", "--strict"]) == 2
    assert ":2:" in capsys.readouterr().err


def test_crystal_special_tokens_continue_the_vocabulary(sp_model):
    tok = build_tokenizer("SentencePieceTokenizer", sp_model, special_tokens="crystal")
    assert len(CRYSTAL_SPECIAL_TOKENS) == 22
    assert tok.vocab_size == 1024  # 1000 + 22, padded to a multiple of 32 (32000 -> 32032)
    assert tok.special_token_ids["<|fim_prefix|>"] == 1000
    assert tok.special_token_ids["<|sys_end|>"] == 1021
    assert (tok.eod, tok.pad, tok.bos) == (2, 3, 1)  # the base model's
    text = "<|sys_start|>be brief<|sys_end|><|im_start|>def f(x):\n    return x<|im_end|>"
    ids = tok.tokenize(text)
    assert ids[0] == 1000 + CRYSTAL_SPECIAL_TOKENS.index("<|sys_start|>")
    assert sum(i >= 1000 for i in ids) == 4  # each special is one id
    assert tok.detokenize(ids) == text
    assert tok.tokenize("plain text") == build_tokenizer("SentencePieceTokenizer",
                                                          sp_model).tokenize("plain text")
    assert build_tokenizer("SentencePieceTokenizer", sp_model, special_tokens="crystal",
                           vocab_pad_to=1100).vocab_size == 1100
    with pytest.raises(ValueError, match="smaller"):
        build_tokenizer("SentencePieceTokenizer", sp_model, special_tokens="crystal",
                        vocab_pad_to=1010)
    # The tokenizer's cache fingerprint changes with the specials (dataset index caches).
    assert tok.unique_identifiers != build_tokenizer("SentencePieceTokenizer",
                                                     sp_model).unique_identifiers


def test_preprocessing_encodes_special_tokens_as_single_ids(sp_model, tmp_path):
    src = tmp_path / "fim.jsonl"
    src.write_text(json.dumps({"text": "<|filename|>a.py\nprint(1)"}) + "\n")
    prefixes, _ = preprocess_jsonl(str(src), str(tmp_path / "o"), tokenizer_model=sp_model,
                                   special_tokens="crystal", append_eod=True, progress=False,
                                   workers=2)
    (doc,) = _docs(prefixes["text"])
    assert doc[0] == 1000 + CRYSTAL_SPECIAL_TOKENS.index("<|filename|>") and doc[-1] == 2


def test_preprocessing_memory_does_not_grow_with_the_input(tmp_path):
    """Streaming: a 70 MB input raises peak memory (main process and workers) by far less than its
    size over a 1 MB one, so files larger than memory go through. Whole-file reading would add more
    than the file itself (Python strings)."""
    import random
    import subprocess
    import sys

    rng = random.Random(0)
    lines = [json.dumps({"text": " ".join(str(rng.randrange(999)) for _ in range(1500))}) + "\n" for _ in range(200)]
    peaks = {}
    for name, documents in (("small", 200), ("large", 12000)):
        path = tmp_path / f"{name}.jsonl"
        with open(path, "w") as f:
            for i in range(documents):
                f.write(lines[i % len(lines)])
        proc = subprocess.run([sys.executable, str(Path(__file__).with_name("preprocess_memory_worker.py")),
                               str(path), str(tmp_path / name), "2"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        peaks[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert peaks[name]["documents"] == documents
    size_mib = (tmp_path / "large.jsonl").stat().st_size / 2**20
    assert size_mib > 60
    growth = {k: (peaks["large"][k] - peaks["small"][k]) / 1024 for k in ("peak_kib", "workers_peak_kib")}
    assert growth["peak_kib"] < size_mib / 2 and growth["workers_peak_kib"] < size_mib / 2, (growth, size_mib)


def test_progress_bar_shows_position_and_tokens_per_second(tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS * 3))  # 3000 records: several updates
    preprocess_jsonl(str(path), str(tmp_path / "out"), tokenizer_type="NullTokenizer", vocab_size=1000,
                     append_eod=True, progress=True)
    err = capsys.readouterr().err
    assert "tokenizing docs.jsonl" in err and "100%" in err, err[-500:]
    assert re.search(r"[\d,]+ tokens/s", err), err[-500:]
