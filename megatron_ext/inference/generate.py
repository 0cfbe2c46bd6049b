"""The generation loop: batched prompts through the parallel model with megatron-core's KV cache.

Why a loop of our own rather than megatron-core's inference engine (megatron.core.inference, 0.16.1):
- its StaticInferenceEngine now runs the DynamicInferenceEngine underneath (paged KV cache, flash-attn
  kernels, CUDA graphs): CUDA only. The legacy static path (`legacy=True`, deprecated upstream) times every
  step with torch.cuda.Event, which the CPU build of torch cannot even construct ("Tried to instantiate
  dummy base class Event"), so it cannot run on CPU/gloo without patching megatron-core beyond the platform
  layer's device redirection;
- its sampling refuses top-k together with top-p, samples over the padded vocabulary and clamps the id
  (a padding row's sample becomes the last real token), and its static path stops on one termination id
  only: no stop strings, no chat end-of-reply token;
What we do use from megatron-core: its static KV cache (StaticInferenceContext; SelfAttention stores each
layer's keys and values and hands the whole sequence's to the core attention, layers/attention.py), its
pipeline schedule for the forward (any PP) and its tensor-parallel gather of the vocabulary shards. The
batching is its static controller's: prompts of different lengths share one right-padded batch; the prefill
runs up to the shortest prompt, then every step feeds one position for all rows, a row still inside its
prompt taking its own next prompt token instead of a sample. Every token of every row thus sits at its true
position with causal attention over exactly its own tokens: no padding token is ever attended to, so
batched output equals one-prompt-at-a-time output (left padding would need position offsets and a padding
mask in the core attention).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch

from megatron_ext.inference.sampling import Sampling, next_token


@dataclass(frozen=True)
class Stop:
    """When a row stops: a token of `token_ids` (EOS, a chat format's end of reply), a stop string in the
    text, or max_new_tokens generated."""
    token_ids: frozenset = frozenset()
    strings: tuple = ()


@dataclass
class Generation:
    index: int                  # the prompt's position in the input
    prompt_tokens: list
    tokens: list = field(default_factory=list)    # generated ids, including a final stop token
    logprobs: list = field(default_factory=list)  # each generated id's log-probability under the model
    text: str = ""              # generated text: without a final stop token, cut before a stop string
    finish_reason: str | None = None  # "eos" (a stop token), "stop" (a stop string) or "length"

    def as_record(self) -> dict:
        return {"index": self.index, "text": self.text, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "tokens": self.tokens, "logprobs": self.logprobs}


class _Row:
    def __init__(self, generation: Generation, sampling: Sampling):
        self.out = generation
        self.random = None if sampling.greedy else sampling.generator(generation.index)

    @property
    def done(self) -> bool:
        return self.out.finish_reason is not None

    def add(self, token: int, logprob: float, tokenizer, stop: Stop, max_new_tokens: int) -> None:
        """Append a generated token and decide, from the tokens alone (every rank decides the same), whether
        the row is finished."""
        out = self.out
        out.tokens.append(token)
        out.logprobs.append(logprob)
        ended_by_token = token in stop.token_ids
        text = tokenizer.detokenize(out.tokens[:-1] if ended_by_token else out.tokens)
        cuts = [text.find(s) for s in stop.strings if s in text]
        if cuts:
            out.text, out.finish_reason = text[:min(cuts)], "stop"
        else:
            out.text = text
            if ended_by_token:
                out.finish_reason = "eos"
            elif len(out.tokens) >= max_new_tokens:
                out.finish_reason = "length"


class TextGenerator:
    """Generation with an InferenceModel (inference/load.py) on every rank of its TP x PP x DP world."""

    def __init__(self, inference_model):
        self.im = inference_model
        self.device = next(inference_model.model.parameters()).device

    # ---- one forward of a chunk of positions for the whole batch -------------------------------------------

    def _last_logits(self, tokens: torch.Tensor, start: int, context) -> torch.Tensor | None:
        """Full-vocabulary logits [batch, vocab] of the chunk's last position (padding ids removed) on the last
        pipeline stage, None on the others; the KV cache then holds the chunk's positions too."""
        from megatron.core import parallel_state
        from megatron.core.pipeline_parallel import get_forward_backward_func

        vocab = self.im.vocab_size
        positions = torch.arange(start, start + tokens.shape[1], device=self.device).expand_as(tokens)

        def forward_step(data_iterator, model):
            data = next(data_iterator)
            # In inference mode megatron-core's GPTModel gathers the vocabulary shards itself (it asserts
            # runtime_gather_output), so every TP rank gets the whole padded row; the padding ids are cut off
            # it (what language_model_logits' mask does in training: they never get probability).
            output = model(data["tokens"], data["position_ids"], None, inference_context=context,
                           runtime_gather_output=True)

            def collect(logits):  # [batch, 1, padded vocab]: only the last position (static context)
                return logits.sum() * 0.0, {"logits": logits[:, -1, :vocab].float()}
            return output, collect

        results = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([{"tokens": tokens, "position_ids": positions}]),
            model=self.im.model, num_microbatches=1, seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0],
            forward_only=True)
        context.increment_sequence_len_offset(tokens.shape[1])
        return results[0]["logits"] if parallel_state.is_pipeline_last_stage() else None

    def _share_from_last_stage(self, message: torch.Tensor) -> torch.Tensor:
        from megatron.core import parallel_state

        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            torch.distributed.broadcast(message, parallel_state.get_pipeline_model_parallel_last_rank(),
                                        group=parallel_state.get_pipeline_model_parallel_group())
        return message

    # ---- one batch ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate_batch(self, generations: list[Generation], max_new_tokens: int, sampling: Sampling,
                       stop: Stop) -> list[Generation]:
        from megatron.core import parallel_state
        from megatron.core.inference.contexts import StaticInferenceContext

        rows = [_Row(g, sampling) for g in generations]
        lengths = [len(g.prompt_tokens) for g in generations]
        if min(lengths) == 0:
            raise ValueError(f"prompt {generations[lengths.index(0)].index} is empty (no tokens): give some text, "
                             "or --add-bos")
        total = max(lengths) + max_new_tokens
        tokens = torch.zeros(len(rows), total, dtype=torch.long, device=self.device)
        for i, g in enumerate(generations):
            tokens[i, :lengths[i]] = torch.tensor(g.prompt_tokens)
        context = StaticInferenceContext(max_batch_size=len(rows), max_sequence_length=total)
        last_stage = parallel_state.is_pipeline_last_stage()
        start, end = 0, min(lengths)
        while True:
            logits = self._last_logits(tokens[:, start:end], start, context)
            # Rows whose next position (`end`) lies past their prompt take a generated token there.
            sampled = [i for i, row in enumerate(rows) if lengths[i] <= end and not row.done]
            message = torch.zeros(2, len(rows), dtype=torch.float64, device=self.device)
            if last_stage:
                for i in sampled:
                    message[0, i], message[1, i] = next_token(logits[i], sampling, rows[i].random)
            message = self._share_from_last_stage(message).cpu()
            for i in sampled:
                token = int(message[0, i])
                tokens[i, end] = token
                rows[i].add(token, float(message[1, i]), self.im.tokenizer, stop, max_new_tokens)
            if all(row.done for row in rows) or end + 1 >= total:
                break
            start, end = end, end + 1
        return generations

    # ---- everything ----------------------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], max_new_tokens: int, sampling: Sampling, stop: Stop,
                 max_batch_size: int = 16, log=None) -> list[Generation] | None:
        """Generations for every prompt (token ids), in input order, on global rank 0 (None on the others).
        Data-parallel replicas take every dp-th prompt; each replica batches its prompts by length."""
        from megatron.core import parallel_state

        if max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        dp_rank = parallel_state.get_data_parallel_rank()
        dp_size = parallel_state.get_data_parallel_world_size()
        mine = sorted(range(dp_rank, len(prompts), dp_size), key=lambda i: len(prompts[i]))
        began, done = time.perf_counter(), []
        for first in range(0, len(mine), max_batch_size):
            batch = [Generation(i, list(prompts[i])) for i in mine[first:first + max_batch_size]]
            done += self.generate_batch(batch, max_new_tokens, sampling, stop)
        seconds = time.perf_counter() - began
        gathered = [None] * torch.distributed.get_world_size() if torch.distributed.get_rank() == 0 else None
        torch.distributed.gather_object(done, gathered, dst=0)
        if torch.distributed.get_rank() != 0:
            return None
        by_index = {g.index: g for replica in gathered for g in replica}
        results = [by_index[i] for i in range(len(prompts))]
        generated = sum(len(g.tokens) for g in results)
        print(f" > generated {generated} tokens for {len(results)} prompts in {seconds:.1f} s "
              f"({generated / max(seconds, 1e-9):.1f} tokens/s)", file=log or sys.stderr, flush=True)
        return results
