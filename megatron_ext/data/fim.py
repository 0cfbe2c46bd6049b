"""Fill-in-the-middle (FIM) as a training-time transform of GPT samples.

Bavarian et al. 2022, "Efficient Training of Language Models to Fill in the
Middle", as StarCoder's and LLM360 Crystal's Megatron-LM forks apply it: each
document of a sample is, with probability ``fim_rate``, cut at two random
points into prefix / middle / suffix and rearranged as

  PSM: <pre> prefix <suf> suffix <mid> middle
  SPM: <pre> <suf> suffix <mid> prefix middle      (with probability ``spm_rate``)

The loss stays on every token (sentinels included), as LLM360 trained.

Why per document: a sample is a window of the concatenated token stream, so it
holds several documents separated by EOD; rearranging across an EOD would mix
unrelated files.  Each FIM'd document grows by three sentinels, so the
rearranged window is cut back to seq_length + 1 tokens (character-level
re-encoding can also make it shorter, then it is padded and the padding is
masked out of the loss).  Randomness is a function of (seed, sample index)
only, so a sample is the same in every epoch, on every rank and after resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
FIM_SPLIT_MODES = ("token", "char")


@dataclass(frozen=True)
class FIMSentinels:
    prefix: int
    middle: int
    suffix: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "FIMSentinels":
        return cls(*(special_token_id(tokenizer, t) for t in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)))


def special_token_id(tokenizer, token: str) -> int:
    """The id of a special token; a clear error when the tokenizer lacks it."""
    specials = getattr(tokenizer, "special_token_ids", None) or {}
    if token in specials:
        return specials[token]
    vocab = tokenizer.vocab  # may be large to build; only reached without special_token_ids
    if token in vocab:
        return vocab[token]
    raise ValueError(f"tokenizer has no {token} token, which FIM needs; "
                     "add it with --special-tokens crystal")


@dataclass(frozen=True)
class FIMRates:
    fim_rate: float = 0.0
    spm_rate: float = 0.0

    def __post_init__(self):
        for name in ("fim_rate", "spm_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} {value} must be within [0, 1]")


def _arrange(prefix, middle, suffix, spm: bool, s: FIMSentinels) -> np.ndarray:
    p, m, x = (np.asarray(a, dtype=np.int64) for a in (prefix, middle, suffix))
    if spm:  # variant 2 of the FIM paper's SPM, as StarCoder/Crystal used
        parts = ([s.prefix, s.suffix], x, [s.middle], p, m)
    else:
        parts = ([s.prefix], p, [s.suffix], x, [s.middle], m)
    return np.concatenate([np.asarray(a, dtype=np.int64) for a in parts])


def permute_document(doc: np.ndarray, rng: np.random.Generator, rates: FIMRates,
                     sentinels: FIMSentinels, tokenizer=None, mode: str = "token") -> np.ndarray:
    """One document (no EOD) -> itself, or its FIM rearrangement (3 tokens longer
    in token mode; re-encoded pieces in char mode).

    The random draws are made in the same order whatever the outcome, so one
    document's decision does not shift the next document's.
    """
    do_fim = rng.random() < rates.fim_rate
    spm = rng.random() < rates.spm_rate
    u = rng.random(2)  # cut points as fractions: same draws in both modes
    if not do_fim or len(doc) == 0:
        return doc
    if mode == "token":
        lo, hi = sorted(int(f * (len(doc) + 1)) for f in u)
        return _arrange(doc[:lo], doc[lo:hi], doc[hi:], spm, sentinels)
    if mode != "char":
        raise ValueError(f"FIM split mode {mode!r} unknown; choose from {FIM_SPLIT_MODES}")
    # Character level: cut the text, so a cut never falls inside a token. Fragment encoding: a
    # SentencePiece model would otherwise put a space before each piece and drop leading ones.
    decode = getattr(tokenizer, "detokenize_fragment", tokenizer.detokenize)
    encode = getattr(tokenizer, "tokenize_fragment", tokenizer.tokenize)
    text = decode(doc.tolist())
    lo, hi = sorted(int(f * (len(text) + 1)) for f in u)
    pieces = [encode(t) for t in (text[:lo], text[lo:hi], text[hi:])]
    return _arrange(*pieces, spm, sentinels)


def fim_window(window: np.ndarray, rng: np.random.Generator, rates: FIMRates,
               sentinels: FIMSentinels, eod: int, pad: int, tokenizer=None,
               mode: str = "token") -> tuple[np.ndarray, int]:
    """A sample's seq_length + 1 tokens -> (same-length FIM'd tokens, number of
    padding tokens at the end)."""
    length = len(window)
    out, start = [], 0
    ends = np.flatnonzero(window == eod).tolist() + [length]
    for end in ends:  # the segment [start, end) is one (possibly partial) document
        out.append(permute_document(window[start:end], rng, rates, sentinels, tokenizer, mode))
        if end < length:
            out.append(window[end:end + 1])  # the EOD itself
        start = end + 1
    tokens = np.concatenate(out).astype(np.int64)[:length]
    n_pad = length - len(tokens)
    if n_pad:
        tokens = np.concatenate([tokens, np.full(n_pad, pad, dtype=np.int64)])
    return tokens, n_pad


class FIMDataset:
    """Wraps a (GPT or blended) dataset; rearranges samples of the sources that
    have a non-zero FIM rate.

    rates: {dataset_id: FIMRates}; a sample's source is its "dataset_id" (set
      by megatron-core's BlendedDataset), 0 for an unblended dataset.
    """

    def __init__(self, dataset, rates: Mapping[int, FIMRates], sentinels: FIMSentinels,
                 eod: int, pad: int | None = None, seed: int = 1234, tokenizer=None,
                 mode: str = "token"):
        if mode not in FIM_SPLIT_MODES:
            raise ValueError(f"FIM split mode {mode!r} unknown; choose from {FIM_SPLIT_MODES}")
        if mode == "char" and tokenizer is None:
            raise ValueError("character-level FIM needs the tokenizer (decode, split, re-encode)")
        self.dataset, self.rates, self.sentinels = dataset, dict(rates), sentinels
        self.eod = eod
        self.pad = eod if pad is None or pad < 0 else pad
        self.seed, self.tokenizer, self.mode = seed, tokenizer, mode

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[index]
        rates = self.rates.get(int(sample.get("dataset_id", 0)))
        if rates is None or rates.fim_rate == 0:
            return sample
        window = np.concatenate([np.asarray(sample["tokens"]), np.asarray(sample["labels"][-1:])])
        rng = np.random.default_rng([self.seed, int(index)])
        tokens, n_pad = fim_window(window.astype(np.int64), rng, rates, self.sentinels,
                                   self.eod, self.pad, self.tokenizer, self.mode)
        # Loss on every token (LLM360), but not on padding added here: position
        # i predicts labels[i], so the last n_pad labels are padding.
        loss_mask = np.ones(len(tokens) - 1, dtype=np.float32)
        if n_pad:
            loss_mask[len(loss_mask) - n_pad:] = 0.0
        out = dict(sample)
        new = {"tokens": tokens[:-1].copy(), "labels": tokens[1:].copy(), "loss_mask": loss_mask}
        for key, value in new.items():
            # Same container type as the wrapped dataset gives (torch for GPTDataset).
            out[key] = torch.from_numpy(value) if isinstance(sample[key], torch.Tensor) else value
        return out


def wrap_with_fim(dataset, source_rates: Sequence[FIMRates], tokenizer, seed: int,
                  mode: str = "token"):
    """The dataset itself when no source uses FIM, else a FIMDataset."""
    rates = {i: r for i, r in enumerate(source_rates) if r.fim_rate > 0}
    if dataset is None or not rates:
        return dataset
    return FIMDataset(dataset, rates, FIMSentinels.from_tokenizer(tokenizer), eod=tokenizer.eod,
                      pad=tokenizer.pad, seed=seed, tokenizer=tokenizer, mode=mode)
