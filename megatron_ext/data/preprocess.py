"""Documents -> Megatron indexed datasets (.bin/.idx), as Megatron-LM's
tools/preprocess_data.py does, with megatron-core's IndexedDatasetBuilder.

Inputs: ``.jsonl``, ``.jsonl.gz`` (one JSON object a line) and ``.parquet``
(one row a document).  One output per key: ``{output_prefix}_{key}_document.bin/.idx``;
each record becomes one document (one sequence), optionally followed by EOD.

Built for corpora larger than memory: the input is streamed in batches and at
most a few batches per worker are in flight, results are written in input
order (so the output is byte-identical whatever the worker count).  Bad
records (invalid JSON, missing key, text that is not a string, empty text) are
skipped, counted and reported with their line (row) numbers; ``strict`` makes
the first one fatal.  If no record at all is usable the run fails with the
first problem (typically a wrong --json-keys).
"""

from __future__ import annotations

import collections
import gzip
import json
import multiprocessing
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy

from megatron_ext.data.tokenizers import build_tokenizer


class PreprocessError(ValueError):
    """Bad input (missing file/key, malformed line) or refused overwrite."""


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron-LM's naming: the prefix to pass to --data-path for this key."""
    return f"{output_prefix}_{key}_document"


@dataclass
class PreprocessStats:
    documents: int = 0
    skipped_empty: int = 0
    bad: int = 0  # invalid JSON, missing key, non-string text (empty text counts in skipped_empty)
    tokens: int = 0
    seconds: float = 0.0
    # (line or row number, reason) of the first problems, for the report.
    problems: list = field(default_factory=list)


MAX_REPORTED_PROBLEMS = 20
INPUT_FORMATS = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
_BATCH_RECORDS = 256  # records per worker task: amortises inter-process overhead
_EMPTY = "empty text"


# --- worker side -------------------------------------------------------------
# Workers build their own tokenizer once (tokenizer objects wrap native handles
# that are not worth pickling per task) and encode a batch of records per task.

_worker = {}


def _init_worker(tokenizer_args: tuple, tokenizer_kwargs: dict, json_keys: Sequence[str],
                 append_eod: bool) -> None:
    tokenizer = build_tokenizer(*tokenizer_args, **tokenizer_kwargs)
    _worker.update(tokenizer=tokenizer, keys=tuple(json_keys), append_eod=append_eod,
                   eod=tokenizer.eod if append_eod else None)


def _parse(raw) -> tuple[dict | None, str | None]:
    if isinstance(raw, dict):  # parquet rows arrive parsed
        return raw, None
    if not raw.strip():
        return None, None  # blank line: not a record
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"not valid JSON ({err})"
    if not isinstance(doc, dict):
        return None, f"not a JSON object ({type(doc).__name__})"
    return doc, None


def _encode(item: tuple[int, object]) -> tuple[int, int, dict]:
    """(line number, raw line or row) -> (line number, size, {key: ids} or {"__error__": why})."""
    lineno, raw = item
    size = len(raw) if isinstance(raw, bytes) else 1
    doc, error = _parse(raw)
    if error:
        return lineno, size, {"__error__": error}
    if doc is None:
        return lineno, size, {}
    out = {}
    for key in _worker["keys"]:
        if key not in doc:
            return lineno, size, {
                "__error__": f"no key {key!r} (present: {sorted(doc)}); choose with --json-keys"}
        text = doc[key]
        if not isinstance(text, str):
            return lineno, size, {"__error__": f"{key!r} is {type(text).__name__}, not a string"}
        ids = _worker["tokenizer"].tokenize(text)
        if _worker["append_eod"] and ids:
            ids.append(_worker["eod"])
        out[key] = numpy.asarray(ids, dtype=numpy.int64)
    return lineno, size, out


def _encode_batch(batch: list) -> list:
    return [_encode(item) for item in batch]


# --- reading -----------------------------------------------------------------

def _input_format(path: str) -> str:
    for fmt in sorted(INPUT_FORMATS, key=len, reverse=True):
        if path.endswith(fmt):
            return fmt
    raise PreprocessError(f"--input {path}: unknown format; expected one of {INPUT_FORMATS}")


class _Reader:
    """Streams (number, record) batches and tells how far through the file it is
    (bytes of the file on disk, or rows for parquet) for the progress bar."""

    def __init__(self, path: str, json_keys: Sequence[str]):
        self.path, self.keys, self.format = path, list(json_keys), _input_format(path)
        if self.format == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError as exc:
                raise PreprocessError(f"{path}: reading .parquet needs pyarrow, which is not installed: "
                                      "pip install pyarrow (or megatron-ext[parquet])") from exc
            self._pq = pq.ParquetFile(path)
            self.total = self._pq.metadata.num_rows
            missing = [k for k in self.keys if k not in self._pq.schema_arrow.names]
            if missing:
                raise PreprocessError(f"{path}: no column {missing[0]!r} (present: "
                                      f"{self._pq.schema_arrow.names}); choose with --json-keys")
        else:
            self.total = os.path.getsize(path)
        self._raw = None

    def position(self) -> int:
        return self._raw.tell() if self._raw is not None and not self._raw.closed else 0

    def batches(self) -> Iterator[list]:
        if self.format == ".parquet":
            row = 0
            for rb in self._pq.iter_batches(batch_size=_BATCH_RECORDS, columns=self.keys):
                rows = rb.to_pylist()
                yield [(row + i + 1, r) for i, r in enumerate(rows)]
                row += len(rows)
            return
        with open(self.path, "rb") as raw:
            self._raw = raw
            lines = _gzip_lines(self.path, raw) if self.format.endswith(".gz") else enumerate(raw, 1)
            batch = []
            for item in lines:
                batch.append(item)
                if len(batch) == _BATCH_RECORDS:
                    yield batch
                    batch = []
            if batch:
                yield batch


def _gzip_lines(path: str, raw) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a gzip stream.  A damaged stream (which gzip reports as a bare
    EOFError or BadGzipFile naming no file) ends in a PreprocessError naming the file and the line
    reached; the caller then removes its partial output."""
    lineno = 0
    try:
        for lineno, line in enumerate(gzip.GzipFile(fileobj=raw), 1):
            yield lineno, line
    except EOFError as err:
        raise PreprocessError(f"{path}: truncated (the compressed stream ends mid-stream after line "
                              f"{lineno}); copy or download it again (`gzip -t` checks a file)") from err
    except (gzip.BadGzipFile, zlib.error) as err:
        if lineno == 0 and str(err).startswith("Not a gzipped file"):
            raise PreprocessError(f"{path}: not a gzip file; if it holds plain JSON lines, name it "
                                  ".jsonl") from err
        raise PreprocessError(f"{path}: corrupt gzip data after line {lineno} ({err}); copy or "
                              "download it again (`gzip -t` checks a file)") from err


def _ordered_results(pool, batches: Iterator[list], max_in_flight: int, work=None) -> Iterator:
    """Like pool.imap(work, batches) (work: _encode_batch unless given) but reads
    ahead at most max_in_flight batches: imap's feeder thread would pull the whole
    input into memory when the workers are slower than reading."""
    pending = collections.deque()
    for batch in batches:
        pending.append(pool.apply_async(work or _encode_batch, (batch,)))
        if len(pending) >= max_in_flight:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


# --- driver ------------------------------------------------------------------

def preprocess_jsonl(input_path: str, output_prefix: str, json_keys: Sequence[str] = ("text",),
                     tokenizer_type: str = "SentencePieceTokenizer",
                     tokenizer_model: str | None = None, vocab_size: int | None = None,
                     append_eod: bool = False, workers: int = 1, overwrite: bool = False,
                     progress: bool = True, strict: bool = False, special_tokens=None,
                     vocab_pad_to: int | None = None) -> tuple[dict[str, str], PreprocessStats]:
    """Tokenize every record of a .jsonl/.jsonl.gz/.parquet file into one indexed
    dataset per key.

    Returns ({key: dataset prefix}, stats).  Output is byte-identical for any
    ``workers`` (results are consumed in input order).  Files are written under
    temporary names and renamed at the end (.bin before .idx, so an .idx only
    exists next to a complete .bin); on error the temporaries are removed.
    """
    from megatron.core.datasets.indexed_dataset import (
        DType, IndexedDatasetBuilder, get_bin_path, get_idx_path)
    from tqdm import tqdm

    if not os.path.isfile(input_path):
        raise PreprocessError(f"--input {input_path} not found")
    if not json_keys:
        raise PreprocessError("--json-keys needs at least one key")
    workers = max(1, int(workers))
    tokenizer_args = (tokenizer_type, tokenizer_model, vocab_size)
    tokenizer_kwargs = {"special_tokens": special_tokens, "vocab_pad_to": vocab_pad_to}
    # Built here too: fails fast on a bad --tokenizer-model before any worker
    # starts, and gives the vocab size that picks the token dtype.
    tokenizer = build_tokenizer(*tokenizer_args, **tokenizer_kwargs)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)  # uint16 below 65500 ids, else int32
    reader = _Reader(input_path, json_keys)

    prefixes = {key: output_prefix_for(output_prefix, key) for key in json_keys}
    finals = {key: (get_bin_path(p), get_idx_path(p)) for key, p in prefixes.items()}
    existing = [f for pair in finals.values() for f in pair if os.path.exists(f)]
    if existing and not overwrite:
        raise PreprocessError(f"{existing[0]} already exists; pass --overwrite to replace it")
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)

    suffix = f".tmp-{os.getpid()}"
    temps = {key: (b + suffix, i + suffix) for key, (b, i) in finals.items()}
    stats = PreprocessStats()
    t0 = time.time()
    pool = None
    builders = {}

    def problem(lineno: int, why: str) -> None:
        if strict:
            raise PreprocessError(f"{input_path}:{lineno}: {why} (--strict)")
        if len(stats.problems) < MAX_REPORTED_PROBLEMS:
            stats.problems.append((lineno, why))

    try:
        builders = {key: IndexedDatasetBuilder(temps[key][0], dtype=dtype) for key in json_keys}
        if workers == 1:
            _init_worker(tokenizer_args, tokenizer_kwargs, json_keys, append_eod)
            results = (r for batch in reader.batches() for r in _encode_batch(batch))
        else:
            pool = multiprocessing.Pool(workers, initializer=_init_worker,
                                        initargs=(tokenizer_args, tokenizer_kwargs, json_keys,
                                                  append_eod))
            results = _ordered_results(pool, reader.batches(), max_in_flight=4 * workers)
        by_rows = reader.format == ".parquet"
        bar = tqdm(total=reader.total, unit="row" if by_rows else "B", unit_scale=True,
                   desc=f"tokenizing {os.path.basename(input_path)}", disable=not progress)
        with bar:
            for n, (lineno, size, encoded) in enumerate(results):
                if n % 1024 == 0 and progress:
                    bar.n = lineno if by_rows else reader.position()  # compressed bytes for .gz
                    rate = stats.tokens / max(time.time() - t0, 1e-9)
                    bar.set_postfix_str(f"{rate:,.0f} tokens/s", refresh=False)
                    bar.refresh()
                if "__error__" in encoded:
                    stats.bad += 1
                    problem(lineno, encoded["__error__"])
                    continue
                if not encoded:
                    continue  # blank line
                if any(len(ids) == 0 for ids in encoded.values()):
                    # Skipped for every key, so the outputs stay aligned by document.
                    stats.skipped_empty += 1
                    problem(lineno, _EMPTY)
                    continue
                for key, ids in encoded.items():
                    builders[key].add_document(ids, [len(ids)])
                    stats.tokens += len(ids)
                stats.documents += 1
            bar.n = reader.total
        if stats.documents == 0 and stats.bad:
            lineno, why = stats.problems[0]
            raise PreprocessError(f"{input_path}:{lineno}: {why} (and every other record "
                                  f"was unusable too: {stats.bad} bad)")
        for key, builder in builders.items():
            builder.finalize(temps[key][1])
        for key in json_keys:
            os.replace(temps[key][0], finals[key][0])
            os.replace(temps[key][1], finals[key][1])
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        for builder in builders.values():
            builder.data_file.close()  # no-op after finalize; needed on the error path
        for pair in temps.values():
            for tmp in pair:
                if os.path.exists(tmp):
                    os.remove(tmp)
    stats.seconds = time.time() - t0
    return prefixes, stats


def format_problems(input_path: str, stats: PreprocessStats) -> str:
    """Human report of skipped records ("" when none)."""
    skipped = stats.bad + stats.skipped_empty
    if not skipped:
        return ""
    lines = [f"skipped {skipped} records ({stats.bad} bad, {stats.skipped_empty} empty text):"]
    lines += [f"  {input_path}:{n}: {why}" for n, why in stats.problems]
    if skipped > len(stats.problems):
        lines.append(f"  ... {skipped - len(stats.problems)} more")
    return "\n".join(lines)
