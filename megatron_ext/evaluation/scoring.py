"""Log-likelihood of (context, continuation) requests with the parallel model, at any TP/PP/DP.

Tokenisation is lm-evaluation-harness's for a causal model (api/model.py _encode_pair, HFLM.tok_encode,
_loglikelihood_tokens in 0.4.x), so the numbers are the ones the harness computes on the Hugging Face
export: trailing spaces of the context move to the continuation; the continuation's tokens are those of
encode(context + continuation) after the len(encode(context)) first ones; encode() adds the special tokens
the export's tokenizer adds by default (a BOS for LLaMA-style tokenizers, nothing for GPT-2-style ones:
`harness_prefix`); an empty context becomes the BOS (else EOS) id; a row longer than the model's context
(max_position_embeddings) keeps its last max_length + 1 tokens.

Each row is the input row[:-1] with labels row[1:]; the continuation's tokens are the last labels. Rows are
sorted by length and taken in groups of MICRO_BATCHES_PER_CALL micro-batches per data-parallel rank; a group is
padded at the end to its longest row (rounded up to a multiple of TP for sequence parallelism; causal attention
never looks at the padding) and split over data-parallel ranks in contiguous blocks; each rank runs
megatron-core's forward-only pipeline schedule once per group (one forward per micro-batch of rows, not one per
choice), the last pipeline stage takes per-token
log-probabilities as -vocab_parallel_cross_entropy of the vocabulary-masked logits (exact at any TP; μP's
output multiplier is inside the model), sums each row's continuation in float64, and the sums are
all-gathered over the data-parallel group.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.utils import get_model_config

from megatron_ext.training.step import language_model_logits


# ---- tokenisation, as the harness does it ------------------------------------------------------------------

def _base(tokenizer):
    return getattr(tokenizer, "base", tokenizer)  # SpecialTokensTokenizer wraps the tokenizer it extends


def harness_prefix(tokenizer) -> list[int]:
    """The ids the Hugging Face export's tokenizer puts before a text when encode() is called with its
    defaults (lm-evaluation-harness's HFLM does, unless told add_bos_token), measured on that tokenizer: a
    Hugging Face tokenizer directory is exported as it is; a SentencePiece model as transformers converts it
    (checkpoint/hf_files.py, the export's own conversion, run here in a temporary directory: with transformers
    5.x the converted tokenizer adds no BOS, with 4.x LlamaTokenizer did); ids-as-text (NullTokenizer) none."""
    base = _base(tokenizer)
    hf = getattr(base, "_tok", None)
    if hf is None and type(base).__name__ == "SentencePieceTokenizer":
        hf = _exported_sentencepiece(base.path)
    if hf is None:
        return []
    plain, full = hf.encode("a b", add_special_tokens=False), hf.encode("a b")
    if full[len(full) - len(plain):] != plain:
        raise ValueError(f"the tokenizer {base.path} adds special tokens after a text by default; the harness's "
                         "context/continuation split cannot be reproduced with it")
    return list(full[:len(full) - len(plain)])


def _exported_sentencepiece(model: str):
    import tempfile

    try:
        from transformers import AutoTokenizer
    except ImportError:  # no transformers, no export to match
        return None
    from megatron_ext.checkpoint.hf_files import _sentencepiece_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        _sentencepiece_tokenizer(model, tmp)
        try:
            return AutoTokenizer.from_pretrained(tmp)
        except Exception:  # the export would carry tokenizer.model alone (hf_files warns): nothing to match
            return None


def prefix_token_id(tokenizer) -> int:
    """What the harness conditions an empty context on: BOS if the tokenizer has one, else EOS."""
    return tokenizer.bos if tokenizer.bos >= 0 else tokenizer.eod


def encode_request(tokenizer, prefix: list[int], context: str, continuation: str,
                   encoded: dict | None = None) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the harness's loglikelihood() makes them. `encoded`: a cache of
    contexts already tokenised (every choice of a document shares its context)."""
    if context == "":
        cont = tokenizer.tokenize(continuation)
        first = prefix_token_id(tokenizer)
        return ([first], cont) if not cont or cont[0] != first else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = prefix + tokenizer.tokenize(context + continuation)
    if encoded is None or context not in encoded:
        ids = tokenizer.tokenize(context)
        if encoded is None:
            encoded = {}
        encoded[context] = ids
    context_ids = prefix + encoded[context]
    return whole[:len(context_ids)], whole[len(context_ids):]


def encode_requests(tokenizer, requests, max_length: int, where: str = "") -> list[tuple[list[int], int]]:
    """Per request: (the row's tokens, at most max_length + 1 of them, the last kept; how many of its last
    tokens are the continuation)."""
    prefix, encoded = harness_prefix(tokenizer), {}
    rows = []
    for i, (context, continuation) in enumerate(requests):
        ctx, cont = encode_request(tokenizer, prefix, context, continuation, encoded)
        if len(encoded) > 64:  # requests come document by document: only the latest contexts recur
            encoded.clear()
        if len(cont) > max_length:
            raise ValueError(f"{where}request {i}: the continuation has {len(cont)} tokens, more than the model's "
                             f"context of {max_length}")
        rows.append(((ctx + cont)[-(max_length + 1):], len(cont)))
    return rows


# ---- batched forward over the parallel model ---------------------------------------------------------------

def _padded_length(rows, multiple: int) -> int:
    longest = max(len(tokens) - 1 for tokens, _ in rows)
    return max(multiple, -(-longest // multiple) * multiple)


def _micro_batches(rows, length: int, micro_batch_size: int):
    """Micro-batch dicts of [b, length] tensors: tokens, position ids, labels, and the mask of the
    continuation's labels (all zero for padding rows)."""
    for start in range(0, len(rows), micro_batch_size):
        block = rows[start:start + micro_batch_size]
        tokens = torch.zeros(len(block), length, dtype=torch.long)
        labels = torch.zeros(len(block), length, dtype=torch.long)
        mask = torch.zeros(len(block), length, dtype=torch.float64)
        for r, row in enumerate(block):
            if row is None:
                continue
            ids, n_cont = row
            n = len(ids) - 1
            tokens[r, :n] = torch.tensor(ids[:-1])
            labels[r, :n] = torch.tensor(ids[1:])
            mask[r, n - n_cont:n] = 1.0
        yield {"tokens": tokens, "labels": labels, "mask": mask,
               "position_ids": torch.arange(length, dtype=torch.long).unsqueeze(0).expand(len(block), -1)}


def _row_loglikelihoods(config, true_vocab_size, labels, mask, logits):
    logits = language_model_logits(logits, config, true_vocab_size)
    logprobs = -tensor_parallel.vocab_parallel_cross_entropy(logits, labels)
    sums = (logprobs.double() * mask).sum(dim=1)
    # The schedule wants a loss and a token count; it only divides and stores them (forward only).
    return logits.new_zeros(()), torch.ones((), dtype=torch.int, device=logits.device), {"loglikelihoods": sums}


def _forward_step(data_iterator, model):
    unwrapped = model.module
    device = next(unwrapped.parameters()).device
    batch = {key: value.to(device) for key, value in next(data_iterator).items()}
    output = model(batch["tokens"], batch["position_ids"], None)
    return output, partial(_row_loglikelihoods, unwrapped.config, unwrapped.true_vocab_size, batch["labels"],
                           batch["mask"])


# Micro-batches per schedule call: rows are sorted by length and each call pads to its own longest row (a task's
# few long rows do not pad all the others), while enough micro-batches per call keep the pipeline's fill and
# drain small.
MICRO_BATCHES_PER_CALL = 16


def loglikelihoods(model, rows, micro_batch_size: int) -> np.ndarray | None:
    """Summed continuation log-probabilities (float64) of `rows` (encode_requests), in order, on the last
    pipeline stage (None on the others). Every rank of the model's groups calls it with the same rows."""
    dp_size = parallel_state.get_data_parallel_world_size()
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    per_call = dp_size * micro_batch_size * MICRO_BATCHES_PER_CALL
    out = np.zeros(len(rows), dtype=np.float64)
    for chunk in model:
        chunk.eval()
    for start in range(0, len(rows), per_call):
        indices = order[start:start + per_call]
        sums = _call_schedule(model, [rows[i] for i in indices], micro_batch_size)
        if sums is not None:
            out[indices] = sums
    for chunk in model:
        chunk.train()
    return out if parallel_state.is_pipeline_last_stage(ignore_virtual=True) else None


def _call_schedule(model, rows, micro_batch_size: int) -> np.ndarray | None:
    """One forward-only schedule call over `rows`, split over data-parallel ranks in contiguous blocks."""
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    microbatches = -(-len(rows) // (dp_size * micro_batch_size))
    if len(model) > 1:  # the interleaved schedule runs micro-batches in groups (of PP by default): whole groups
        group = get_model_config(model[0]).microbatch_group_size_per_vp_stage or \
            parallel_state.get_pipeline_model_parallel_world_size()
        microbatches = -(-microbatches // group) * group
    per_rank = microbatches * micro_batch_size
    padded = list(rows) + [None] * (per_rank * dp_size - len(rows))
    mine = padded[dp_rank * per_rank:(dp_rank + 1) * per_rank]
    length = _padded_length(rows, tp_size)
    iterators = [_micro_batches(mine, length, micro_batch_size) for _ in model]
    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=_forward_step, data_iterator=iterators if len(model) > 1 else iterators[0],
            model=model if len(model) > 1 else model[0], num_microbatches=microbatches,
            seq_length=length, micro_batch_size=micro_batch_size, forward_only=True)
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    local = torch.cat([out["loglikelihoods"] for out in outputs])
    gathered = [torch.empty_like(local) for _ in range(dp_size)]
    dist.all_gather(gathered, local, group=parallel_state.get_data_parallel_group())
    return torch.cat(gathered)[:len(rows)].cpu().numpy()
