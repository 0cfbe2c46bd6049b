"""Damaged .jsonl.gz inputs to tools/preprocess_data.py: one line naming the file and what is wrong
(exit 2, no traceback), and no .bin/.idx output, partial or temporary, left behind."""

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from megatron_ext.data.preprocess import PreprocessError, preprocess_jsonl

REPO = Path(__file__).resolve().parents[2]
LINES = 3000  # several reader batches, so a truncation is reached after output was written


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("preprocess_data", REPO / "tools" / "preprocess_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonl_bytes() -> bytes:
    return b"".join(json.dumps({"text": " ".join(str((i * 7 + j) % 500) for j in range(40))}).encode() + b"\n"
                    for i in range(LINES))


def _gz(path, data: bytes):
    path.write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
    return path


def _argv(path, prefix, *extra):
    return ["--input", str(path), "--output-prefix", str(prefix), "--tokenizer-type", "NullTokenizer",
            "--vocab-size", "500", "--append-eod", "--no-progress", *extra]


def _error_line(cli, capsys, argv) -> str:
    """Runs the tool; returns its one stderr line after checking exit code 2 and no traceback."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def _outputs(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if ".bin" in p.name or ".idx" in p.name)


def test_plain_text_named_gz_is_not_a_gzip_file(cli, capsys, tmp_path):
    src = tmp_path / "x.jsonl.gz"
    src.write_bytes(_jsonl_bytes())
    err = _error_line(cli, capsys, _argv(src, tmp_path / "out"))
    assert err == f"error: {src}: not a gzip file; if it holds plain JSON lines, name it .jsonl"
    assert _outputs(tmp_path) == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_truncated_gz_names_file_and_line_and_writes_nothing(cli, capsys, tmp_path, workers):
    src = _gz(tmp_path / "x.jsonl.gz", _jsonl_bytes())
    whole = src.read_bytes()
    src.write_bytes(whole[: len(whole) * 2 // 3])  # an interrupted download
    err = _error_line(cli, capsys, _argv(src, tmp_path / "out", "--workers", workers))
    assert err.startswith(f"error: {src}: truncated (the compressed stream ends mid-stream after line ")
    line = int(err.split("after line ")[1].split(")")[0])
    assert LINES // 3 < line < LINES  # it read a good part of the file before the end
    assert _outputs(tmp_path) == []  # neither final nor temporary .bin/.idx


def test_corrupt_gz_names_file(cli, capsys, tmp_path):
    src = _gz(tmp_path / "x.jsonl.gz", _jsonl_bytes())
    data = bytearray(src.read_bytes())
    data[-8] ^= 0xFF  # a flipped bit in the stored CRC: the data no longer checks out
    src.write_bytes(bytes(data))
    err = _error_line(cli, capsys, _argv(src, tmp_path / "out"))
    assert err.startswith(f"error: {src}: corrupt gzip data after line {LINES} (CRC check failed")
    assert _outputs(tmp_path) == []


def test_damaged_input_leaves_existing_output_untouched(tmp_path):
    good = _gz(tmp_path / "good.jsonl.gz", _jsonl_bytes())
    kw = dict(tokenizer_type="NullTokenizer", vocab_size=500, append_eod=True, progress=False)
    prefixes, _ = preprocess_jsonl(str(good), str(tmp_path / "out"), **kw)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("out_")}
    assert set(before) == {"out_text_document.bin", "out_text_document.idx"}
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(PreprocessError, match="truncated"):
        preprocess_jsonl(str(bad), str(tmp_path / "out"), overwrite=True, **kw)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("out_")}
    assert after == before
