"""Preference JSONL -> indexed files the DPO trainer reads (contract item 3), streamed, rows checked.

Output for ``--output-prefix OUT``:
  ``OUT_preference.bin/.idx``            token ids, two consecutive sequences a pair: prompt + chosen, then
                                          prompt + rejected (one document each);
  ``OUT_preference_loss_mask.bin/.idx``   uint8 0/1 of the same lengths, 1 on the final reply's tokens;
  ``OUT_preference.json``                 {"kind": "preference", chat format, tokenizer flags, the special
                                          tokens the training run must pass, seq_length, counts}.
With ``sft=True`` also ``OUT_conversation*`` (contract item 2): the chosen conversations, the data of the
SFT stage that precedes DPO in the AmberSafe recipe.

Nothing that exists is overwritten: the run refuses to start if any output is there, writes temporaries
and renames them at the end (.bin before .idx), and removes its temporaries on error.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from megatron_ext.preference.data import (BadRow, FilteredRow, TRUNCATE, messages_for_sft, pair_from_record,
                                          render_pair)

PREFERENCE_SUFFIX = "_preference"
SFT_SUFFIX = "_conversation"
MASK_SUFFIX = "_loss_mask"
MAX_REPORTED = 20


class PreferencePreprocessError(ValueError):
    """Bad input (missing file, every row bad, --strict) or a refused overwrite."""


@dataclass
class PreferenceStats:
    rows: int = 0            # non-blank lines read
    pairs: int = 0           # written
    bad: int = 0
    filtered: int = 0        # left out by design (equal PKU safety labels, --overlong drop)
    truncated: int = 0
    tokens: int = 0
    seconds: float = 0.0
    problems: list = field(default_factory=list)   # (line, why) of the first bad rows
    filtered_reasons: dict = field(default_factory=dict)


def _lines(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from enumerate(f, 1)


def _records(path: str):
    """(line or row number, parsed record or a BadRow) for .jsonl, .jsonl.gz and .parquet."""
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise PreferencePreprocessError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from exc
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for record in batch.to_pylist():
                row += 1
                yield row, record
        return
    if not (path.endswith(".jsonl") or path.endswith(".jsonl.gz")):
        raise PreferencePreprocessError(f"--input {path}: expected .jsonl, .jsonl.gz or .parquet")
    for lineno, raw in _lines(path):
        if not raw.strip():
            continue
        try:
            yield lineno, json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            yield lineno, BadRow(f"not valid JSON ({err})")


def output_files(prefix: str, sft: bool) -> list[str]:
    names = []
    for suffix in (PREFERENCE_SUFFIX,) + ((SFT_SUFFIX,) if sft else ()):
        for part in ("", MASK_SUFFIX):
            names += [f"{prefix}{suffix}{part}.bin", f"{prefix}{suffix}{part}.idx"]
        names.append(f"{prefix}{suffix}.json")
    return names


def preprocess_preference(input_path: str, output_prefix: str, chat_format: str, tokenizer_type: str,
                          tokenizer_model: str | None, seq_length: int, layout: str = "auto",
                          overlong: str = TRUNCATE, special_tokens=None, vocab_pad_to: int | None = None,
                          vocab_size: int | None = None, strict: bool = False, sft: bool = False,
                          tokenizer_dir: str | None = None) -> tuple[str, PreferenceStats]:
    """Write the preference files (and with sft the chosen conversations); returns (the --data-path prefix,
    stats)."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    from megatron_ext.data.chat_formats import format_tokenizer, get_chat_format

    if not os.path.isfile(input_path):
        raise PreferencePreprocessError(f"--input {input_path} not found")
    if seq_length < 4:
        raise PreferencePreprocessError(f"--seq-length {seq_length}: too short for a pair")
    existing = [f for f in output_files(output_prefix, sft) if os.path.exists(f)]
    if existing:
        raise PreferencePreprocessError(f"{existing[0]} already exists; nothing is overwritten: remove it or "
                                        "choose another --output-prefix")
    fmt = get_chat_format(chat_format, tokenizer_dir or (tokenizer_model if chat_format == "hf" else None))
    tokenizer, specials = format_tokenizer(fmt, tokenizer_type, tokenizer_model, vocab_size=vocab_size,
                                           special_tokens=special_tokens, vocab_pad_to=vocab_pad_to)
    dtype = DType.optimal_dtype(tokenizer.vocab_size)
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)) or ".", exist_ok=True)

    tmp = f".tmp-{os.getpid()}"
    kinds = [PREFERENCE_SUFFIX] + ([SFT_SUFFIX] if sft else [])
    builders, temps = {}, []
    stats = PreferenceStats()
    t0 = time.time()

    def problem(lineno: int, why: str) -> None:
        stats.bad += 1
        if strict:
            raise PreferencePreprocessError(f"{input_path}:{lineno}: {why} (--strict)")
        if len(stats.problems) < MAX_REPORTED:
            stats.problems.append((lineno, why))

    try:
        for kind in kinds:
            for part, part_dtype in (("", dtype), (MASK_SUFFIX, np.uint8)):
                path = f"{output_prefix}{kind}{part}"
                builders[kind + part] = IndexedDatasetBuilder(path + ".bin" + tmp, dtype=part_dtype)
                temps.append((path, path + ".bin" + tmp, path + ".idx" + tmp))
        sft_tokens = 0
        for lineno, record in _records(input_path):
            stats.rows += 1
            try:
                if isinstance(record, BadRow):
                    raise record
                pair = pair_from_record(record, layout)
                rendered = render_pair(fmt, tokenizer, pair, seq_length, overlong)
            except BadRow as err:
                problem(lineno, str(err))
                continue
            except FilteredRow as why:
                stats.filtered += 1
                stats.filtered_reasons[str(why)] = stats.filtered_reasons.get(str(why), 0) + 1
                continue
            for ids, mask in ((rendered.chosen_ids, rendered.chosen_mask),
                              (rendered.rejected_ids, rendered.rejected_mask)):
                builders[PREFERENCE_SUFFIX].add_document(ids, [len(ids)])
                builders[PREFERENCE_SUFFIX + MASK_SUFFIX].add_document(mask, [len(mask)])
                stats.tokens += len(ids)
            stats.pairs += 1
            stats.truncated += rendered.truncated
            if sft:
                ids, mask = fmt.render(messages_for_sft(pair), tokenizer)
                ids, mask = np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.uint8)
                builders[SFT_SUFFIX].add_document(ids, [len(ids)])
                builders[SFT_SUFFIX + MASK_SUFFIX].add_document(mask, [len(mask)])
                sft_tokens += len(ids)
        if stats.pairs == 0:
            first = f" first bad row: {input_path}:{stats.problems[0][0]}: {stats.problems[0][1]}" \
                if stats.problems else ""
            raise PreferencePreprocessError(f"{input_path}: no usable pair in {stats.rows} rows ({stats.bad} bad, "
                                            f"{stats.filtered} filtered: {stats.filtered_reasons}).{first}")
        for (path, bin_tmp, idx_tmp), builder in zip(temps, builders.values()):
            builder.finalize(idx_tmp)
        stats.seconds = time.time() - t0
        sidecars = {}
        from megatron_ext.data.chat_formats import token_ids

        # The same record as tools/preprocess_sft.py's, so the trainer, the export and generation read either.
        common = {"chat_format": fmt.name, "inputs": [os.path.abspath(input_path)], "tokenizer_type": tokenizer_type,
                  "tokenizer_model": tokenizer_model, "special_tokens": list(specials), "vocab_pad_to": vocab_pad_to,
                  "vocab_size": tokenizer.vocab_size, "end_of_reply": fmt.end_of_reply,
                  "end_of_reply_id": token_ids(tokenizer).get(fmt.end_of_reply), "chat_template": fmt.chat_template}
        sidecars[PREFERENCE_SUFFIX] = {
            "kind": "preference", **common, "layout": layout, "seq_length": seq_length, "overlong": overlong,
            "pairs": stats.pairs, "sequences": 2 * stats.pairs, "tokens": stats.tokens, "rows": stats.rows,
            "bad": stats.bad, "filtered": stats.filtered, "filtered_reasons": stats.filtered_reasons,
            "truncated": stats.truncated}
        if sft:
            sidecars[SFT_SUFFIX] = {"kind": "sft", **common, "train_on_prompt": False,
                                    "conversations": stats.pairs, "tokens": sft_tokens,
                                    "note": "the chosen conversations of " + output_prefix + PREFERENCE_SUFFIX}
        for kind, info in sidecars.items():
            with open(f"{output_prefix}{kind}.json{tmp}", "w") as f:
                json.dump(info, f, indent=1)
        for path, bin_tmp, idx_tmp in temps:
            os.replace(bin_tmp, path + ".bin")
            os.replace(idx_tmp, path + ".idx")
        for kind in sidecars:
            os.replace(f"{output_prefix}{kind}.json{tmp}", f"{output_prefix}{kind}.json")
    finally:
        for builder in builders.values():
            builder.data_file.close()
        for _, bin_tmp, idx_tmp in temps:
            for path in (bin_tmp, idx_tmp):
                if os.path.exists(path):
                    os.remove(path)
        for kind in kinds:
            if os.path.exists(f"{output_prefix}{kind}.json{tmp}"):
                os.remove(f"{output_prefix}{kind}.json{tmp}")
    return output_prefix + PREFERENCE_SUFFIX, stats


def format_report(input_path: str, stats: PreferenceStats) -> str:
    """Human report: counts, then the first bad rows by line number."""
    lines = [f"{stats.pairs} pairs ({2 * stats.pairs} sequences, {stats.tokens} tokens) from {stats.rows} rows "
             f"in {stats.seconds:.1f}s; {stats.bad} bad, {stats.filtered} filtered, {stats.truncated} truncated"]
    for why, n in sorted(stats.filtered_reasons.items()):
        lines.append(f"  filtered {n}: {why}")
    if stats.bad:
        lines.append(f"skipped {stats.bad} bad rows:")
        lines += [f"  {input_path}:{n}: {why}" for n, why in stats.problems]
        if stats.bad > len(stats.problems):
            lines.append(f"  ... {stats.bad - len(stats.problems)} more")
    return "\n".join(lines)
