"""Conversations -> the fine-tuning files the trainer reads (issue 12 item 2, tokenised offline).

For ``--output-prefix OUT`` (train with ``--data-path OUT_conversation``):

- ``OUT_conversation.bin/.idx``: megatron-core indexed dataset of token ids, one sequence (and one document)
  per conversation, rendered by a chat format (data/chat_formats.py);
- ``OUT_conversation_loss_mask.bin/.idx``: the same builder with dtype uint8, 0/1 per token, the same
  sequence lengths (1: the token is a training target: the replies and their end-of-reply token);
- ``OUT_conversation.json``: ``{"kind": "sft", "chat_format", "tokenizer_type", "tokenizer_model",
  "special_tokens" (the --special-tokens the training run must pass), "vocab_size", "train_on_prompt",
  counts...}``.

Inputs: JSONL (``.jsonl``, ``.jsonl.gz``, ``.json`` lines), a JSON array (``.json``/``.json.gz`` starting with
``[``, as ShareGPT dumps and FastChat's data files are; read whole), or ``.parquet``; the record layouts of
data/conversations.py, detected per record by default. The pieces of data/preprocess.py are reused: the
streaming reader, at most a few batches per worker in flight, results consumed in input order (the output is
the same for any worker count), bad records skipped, counted by reason and reported by file and line
(``strict``: the first is fatal), temporaries renamed into place only when complete, and no existing output
overwritten without ``overwrite``.
"""

from __future__ import annotations

import collections
import gzip
import json
import multiprocessing
import os
import time
from dataclasses import dataclass, field

import numpy

from megatron_ext.data.chat_formats import format_tokenizer, get_chat_format, token_ids
from megatron_ext.data.conversations import (FORMAT_TOKENS, INPUT_FORMATS, NOT_JSON, ConversationError,
                                             conversation)
from megatron_ext.data.preprocess import (MAX_REPORTED_PROBLEMS, PreprocessError, _ordered_results, _parse,
                                          _Reader)

SUFFIX = "_conversation"
MASK_SUFFIX = "_loss_mask"
_BATCH = 256


def data_prefix(output_prefix: str) -> str:
    """The --data-path prefix of the token ids (the loss mask is this plus _loss_mask)."""
    return output_prefix + SUFFIX


def output_files(output_prefix: str) -> list[str]:
    prefix = data_prefix(output_prefix)
    mask = prefix + MASK_SUFFIX
    return [prefix + ".bin", prefix + ".idx", mask + ".bin", mask + ".idx", prefix + ".json"]


@dataclass
class SFTStats:
    conversations: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    longest: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)  # reason -> records
    trailing_user_turns_dropped: int = 0
    layouts: collections.Counter = field(default_factory=collections.Counter)  # record layout -> conversations
    problems: list = field(default_factory=list)  # "file:line: message" of the first problems
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"conversations": self.conversations, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                "longest_conversation": self.longest, "skipped": dict(self.skipped),
                "trailing_user_turns_dropped": self.trailing_user_turns_dropped, "layouts": dict(self.layouts)}


# --- worker side: one tokenizer and chat format per process, a batch of records per task -------------------

_worker = {}


def _init_worker(tokenizer_args: dict, chat_format: str, tokenizer_dir: str | None, input_format: str,
                 train_on_prompt: bool) -> None:
    fmt = get_chat_format(chat_format, tokenizer_dir)
    tokenizer, _ = format_tokenizer(fmt, **tokenizer_args)
    _worker.update(fmt=fmt, tokenizer=tokenizer, input_format=input_format, train_on_prompt=train_on_prompt)


def _encode(item) -> tuple:
    """(line, record) -> (line, None) for a blank line, (line, (reason, message)) for a bad record, or
    (line, (ids, mask, layout, dropped_trailing_user))."""
    lineno, raw = item
    if isinstance(raw, (bytes, str)):
        record, error = _parse(raw)
        if error:
            return lineno, (NOT_JSON, error)
        if record is None:
            return lineno, None
    else:
        record = raw
    try:
        messages, layout, dropped = conversation(record, _worker["input_format"])
        ids, mask = _worker["fmt"].render(messages, _worker["tokenizer"], _worker["train_on_prompt"])
    except ConversationError as err:
        return lineno, (err.reason, str(err))
    except ValueError as err:  # the format's own refusal (a tokenizer that lacks its tokens)
        return lineno, ("format_error", str(err))
    return lineno, (numpy.asarray(ids, dtype=numpy.int64), numpy.asarray(mask, dtype=numpy.uint8), layout, dropped)


def _encode_batch(batch: list) -> list:
    return [_encode(item) for item in batch]


# --- reading ------------------------------------------------------------------------------------------------

def _is_json_array(path: str) -> bool:
    if not path.endswith((".json", ".json.gz")):
        return False
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")


def _batches(path: str):
    """Batches of (line or record number, raw line or parsed record)."""
    if _is_json_array(path):
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            try:
                records = json.load(f)
            except json.JSONDecodeError as err:
                raise PreprocessError(f"{path}: not valid JSON ({err}); a .json input is a JSON array of records "
                                      "or one record a line") from err
        for start in range(0, len(records), _BATCH):
            yield [(start + i + 1, r) for i, r in enumerate(records[start:start + _BATCH])]
        return
    reader = _Reader(path, [])
    if reader.format == ".parquet":
        reader.keys = reader._pq.schema_arrow.names  # every column: the layout is found per record
    yield from reader.batches()


# --- driver -------------------------------------------------------------------------------------------------

def preprocess_sft(inputs, output_prefix: str, chat_format: str, *, tokenizer_type: str,
                   tokenizer_model: str | None = None, vocab_size: int | None = None, special_tokens=None,
                   vocab_pad_to: int | None = None, tokenizer_dir: str | None = None, input_format: str = "auto",
                   train_on_prompt: bool = False, workers: int = 1, overwrite: bool = False, strict: bool = False,
                   progress: bool = True) -> tuple[str, SFTStats, dict]:
    """Render every conversation of INPUTS (one path or several, in order) into the SFT files.

    Returns (the --data-path prefix, stats, the .json sidecar's content)."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder
    from tqdm import tqdm

    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    for path in inputs:
        if not os.path.isfile(path):
            raise PreprocessError(f"--input {path} not found")
    if input_format not in INPUT_FORMATS:
        raise PreprocessError(f"--input-format {input_format!r} unknown; choose from {INPUT_FORMATS}")
    if chat_format == "hf" and tokenizer_dir is None and tokenizer_model and os.path.isdir(tokenizer_model):
        tokenizer_dir = tokenizer_model
    fmt = get_chat_format(chat_format, tokenizer_dir)  # fails fast on a bad name or template
    tokenizer_args = dict(tokenizer_type=tokenizer_type, tokenizer_model=tokenizer_model, vocab_size=vocab_size,
                          special_tokens=special_tokens, vocab_pad_to=vocab_pad_to)
    tokenizer, specials = format_tokenizer(fmt, **tokenizer_args)
    # Workers get the final token list, so that every process numbers the added tokens alike.
    tokenizer_args["special_tokens"] = specials or None
    dtype = DType.optimal_dtype(tokenizer.vocab_size)

    finals = output_files(output_prefix)
    existing = [f for f in finals if os.path.exists(f)]
    if existing and not overwrite:
        raise PreprocessError(f"{existing[0]} already exists; pass --overwrite to replace it (nothing was written)")
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    temps = [f"{f}.tmp-{os.getpid()}" for f in finals]
    tok_bin, tok_idx, mask_bin, mask_idx, sidecar = temps

    stats = SFTStats()
    workers = max(1, int(workers))
    init_args = (tokenizer_args, chat_format, tokenizer_dir, input_format, train_on_prompt)
    t0 = time.time()
    pool = None
    builders = []
    try:
        builders = [IndexedDatasetBuilder(tok_bin, dtype=dtype), IndexedDatasetBuilder(mask_bin, dtype=numpy.uint8)]
        if workers > 1:
            pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=init_args)
        else:
            _init_worker(*init_args)
        for path in inputs:
            batches = _batches(path)
            if pool is None:
                results = (r for batch in batches for r in _encode_batch(batch))
            else:
                results = _ordered_results(pool, batches, max_in_flight=4 * workers, work=_encode_batch)
            bar = tqdm(desc=f"rendering {os.path.basename(path)}", unit=" conv", disable=not progress)
            with bar:
                for lineno, result in results:
                    if result is None:
                        continue
                    if len(result) == 2:
                        reason, message = result
                        if strict:
                            raise PreprocessError(f"{path}:{lineno}: {message} (--strict)")
                        stats.skipped[reason] += 1
                        if len(stats.problems) < MAX_REPORTED_PROBLEMS:
                            stats.problems.append(f"{path}:{lineno}: {message}")
                        continue
                    ids, mask, layout, dropped = result
                    builders[0].add_document(ids, [len(ids)])
                    builders[1].add_document(mask, [len(mask)])
                    stats.conversations += 1
                    stats.tokens += len(ids)
                    stats.trained_tokens += int(mask.sum())
                    stats.longest = max(stats.longest, len(ids))
                    stats.layouts[layout] += 1
                    stats.trailing_user_turns_dropped += int(dropped)
                    bar.update(1)
        if stats.conversations == 0:
            first = stats.problems[0] if stats.problems else "the input has no records"
            raise PreprocessError(f"no usable conversation: {first}"
                                  + (f" (and {sum(stats.skipped.values()) - 1} more skipped)"
                                     if sum(stats.skipped.values()) > 1 else ""))
        builders[0].finalize(tok_idx)
        builders[1].finalize(mask_idx)
        stats.seconds = time.time() - t0
        meta = {"kind": "sft", "chat_format": fmt.name, "input_format": input_format,
                "inputs": [os.path.abspath(p) for p in inputs], "tokenizer_type": tokenizer_type,
                "tokenizer_model": tokenizer_model, "special_tokens": list(specials), "vocab_pad_to": vocab_pad_to,
                "vocab_size": tokenizer.vocab_size, "train_on_prompt": bool(train_on_prompt),
                "end_of_reply": fmt.end_of_reply, "end_of_reply_id": token_ids(tokenizer).get(fmt.end_of_reply),
                "chat_template": fmt.chat_template, **stats.as_dict()}
        with open(sidecar, "w") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
            f.write("\n")
        # The loss mask before the tokens and each .bin before its .idx: a prefix whose .idx exists is complete;
        # the sidecar last.
        for i in (2, 3, 0, 1, 4):
            tmp, final = temps[i], finals[i]
            os.replace(tmp, final)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        for builder in builders:
            builder.data_file.close()
        for tmp in temps:
            if os.path.exists(tmp):
                os.remove(tmp)
    return data_prefix(output_prefix), stats, meta


def format_summary(stats: SFTStats, prefix: str, meta: dict) -> str:
    """The report tools/preprocess_sft.py prints."""
    rate = stats.tokens / max(stats.seconds, 1e-9)
    skipped = sum(stats.skipped.values())
    lines = [f"{stats.conversations} conversations, {stats.tokens} tokens ({stats.trained_tokens} trained, "
             f"{100.0 * stats.trained_tokens / max(stats.tokens, 1):.1f}%), longest {stats.longest} tokens, in "
             f"{stats.seconds:.1f}s ({rate:,.0f} tokens/s); chat format {meta['chat_format']}"]
    if stats.trailing_user_turns_dropped:
        lines.append(f"dropped the unanswered last user turn of {stats.trailing_user_turns_dropped} conversations")
    if skipped:
        by_reason = ", ".join(f"{n} {reason}" for reason, n in stats.skipped.most_common())
        lines.append(f"skipped {skipped} records ({by_reason}):")
        lines += [f"  {p}" for p in stats.problems]
        if skipped > len(stats.problems):
            lines.append(f"  ... {skipped - len(stats.problems)} more")
    if meta["special_tokens"]:
        lines.append(f"special tokens: train with --special-tokens {','.join(meta['special_tokens'])}")
    lines.append(f"train with --data-path {prefix}")
    return "\n".join(lines)
