"""JSONL documents -> Megatron indexed datasets (.bin/.idx), as Megatron-LM's
tools/preprocess_data.py does, with megatron-core's IndexedDatasetBuilder.

One output per JSON key: ``{output_prefix}_{key}_document.bin/.idx``; each
input line becomes one document (one sequence), optionally followed by EOD.
Empty documents are skipped (a zero-length sequence carries no tokens).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass
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
    tokens: int = 0
    seconds: float = 0.0


# --- worker side -------------------------------------------------------------
# Workers build their own tokenizer once (tokenizer objects wrap native handles
# that are not worth pickling per task) and encode one line at a time.

_worker = {}


def _init_worker(tokenizer_args: tuple, json_keys: Sequence[str], append_eod: bool) -> None:
    tokenizer = build_tokenizer(*tokenizer_args)
    _worker.update(tokenizer=tokenizer, keys=tuple(json_keys), append_eod=append_eod,
                   eod=tokenizer.eod if append_eod else None)


def _encode(item: tuple[int, bytes]) -> tuple[int, int, dict]:
    """(line number, raw line) -> (line number, raw length, {key: ids or error})."""
    lineno, raw = item
    if not raw.strip():
        return lineno, len(raw), {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as err:
        return lineno, len(raw), {"__error__": f"not valid JSON ({err})"}
    out = {}
    for key in _worker["keys"]:
        if not isinstance(doc, dict) or key not in doc:
            present = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            return lineno, len(raw), {
                "__error__": f"no key {key!r} (present: {present}); choose with --json-keys"}
        ids = _worker["tokenizer"].tokenize(doc[key])
        if _worker["append_eod"] and ids:
            ids.append(_worker["eod"])
        out[key] = numpy.asarray(ids, dtype=numpy.int64)
    return lineno, len(raw), out


def _numbered_lines(path: str) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        yield from enumerate(f, 1)


# --- driver ------------------------------------------------------------------

def preprocess_jsonl(input_path: str, output_prefix: str, json_keys: Sequence[str] = ("text",),
                     tokenizer_type: str = "SentencePieceTokenizer",
                     tokenizer_model: str | None = None, vocab_size: int | None = None,
                     append_eod: bool = False, workers: int = 1, overwrite: bool = False,
                     progress: bool = True) -> tuple[dict[str, str], PreprocessStats]:
    """Tokenize every line of a JSONL file into one indexed dataset per key.

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
    # Built here too: fails fast on a bad --tokenizer-model before any worker
    # starts, and gives the vocab size that picks the token dtype.
    tokenizer = build_tokenizer(*tokenizer_args)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)  # uint16 below 65500 ids, else int32

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
    try:
        builders = {key: IndexedDatasetBuilder(temps[key][0], dtype=dtype) for key in json_keys}
        lines = _numbered_lines(input_path)
        if workers == 1:
            _init_worker(tokenizer_args, json_keys, append_eod)
            results = map(_encode, lines)
        else:
            pool = multiprocessing.Pool(workers, initializer=_init_worker,
                                        initargs=(tokenizer_args, json_keys, append_eod))
            # imap (not imap_unordered) keeps input order: identical output
            # whatever the worker count.
            results = pool.imap(_encode, lines, chunksize=32)
        bar = tqdm(total=os.path.getsize(input_path), unit="B", unit_scale=True,
                   desc=f"tokenizing {os.path.basename(input_path)}", disable=not progress)
        with bar:
            for lineno, nbytes, encoded in results:
                bar.update(nbytes)
                if "__error__" in encoded:
                    raise PreprocessError(f"{input_path}:{lineno}: {encoded['__error__']}")
                if not encoded:
                    continue  # blank line
                if any(len(ids) == 0 for ids in encoded.values()):
                    # Skipped for every key, so the outputs stay aligned by document.
                    stats.skipped_empty += 1
                    continue
                for key, ids in encoded.items():
                    builders[key].add_document(ids, [len(ids)])
                    stats.tokens += len(ids)
                stats.documents += 1
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
