"""Choosing the next token from a row of logits: greedy, or sampled with temperature, top-k and top-p.

Each prompt samples from its own generator, seeded from --seed and the prompt's index in the input, so a
prompt's text depends on the seed and the model alone: not on which other prompts share its batch, the
batch size, or the TP/PP/DP layout. The filters apply in transformers' order (temperature, then top-k,
then top-p), and top-p keeps the smallest set of most likely tokens whose probability reaches P.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0        # 0: no top-k filter
    top_p: float = 1.0    # 1.0: no top-p filter
    seed: int = 0

    def __post_init__(self):
        if not self.greedy:
            if not self.temperature > 0:
                raise ValueError(f"--temperature must be > 0 (got {self.temperature}); use --greedy for argmax")
            if self.top_k < 0:
                raise ValueError(f"--top-k must be >= 0 (0: off), got {self.top_k}")
            if not 0 < self.top_p <= 1:
                raise ValueError(f"--top-p must be in (0, 1] (1: off), got {self.top_p}")

    def generator(self, prompt_index: int) -> torch.Generator:
        """The prompt's own random stream (CPU: the same numbers on every device)."""
        return torch.Generator().manual_seed((self.seed * 1_000_003 + prompt_index) % 2**63)


def filtered_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """logits [vocab] (fp32) after temperature, top-k and top-p; removed tokens at -inf."""
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.numel():
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the more likely tokens
        remove = mass_before >= sampling.top_p
        remove[0] = False  # the most likely token always stays
        logits = logits.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    return logits


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> tuple[int, float]:
    """(token, its log-probability under the model's own distribution: before temperature and filters).
    logits: one row [vocab], the padded vocabulary already cut off."""
    logits = logits.float().cpu()
    log_probs = logits.log_softmax(-1)
    if sampling.greedy:
        token = int(torch.argmax(logits))
    else:
        probs = filtered_logits(logits, sampling).softmax(-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
    return token, float(log_probs[token])
