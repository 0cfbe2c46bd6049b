"""Preference files for trainer tests, written directly (token ids, no chat format): the layout
tools/preprocess_preference.py writes (contract item 3), so trainer tests do not depend on a tokenizer."""

import json

import numpy as np


def write_pairs(prefix: str, pairs, vocab_size: int, seq_length: int = 64) -> str:
    """pairs: (prompt ids, chosen ids, rejected ids). Writes PREFIX_preference{.bin,.idx,_loss_mask.*,.json};
    returns the --data-path prefix."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    out = f"{prefix}_preference"
    tokens = IndexedDatasetBuilder(out + ".bin", dtype=DType.optimal_dtype(vocab_size))
    masks = IndexedDatasetBuilder(out + "_loss_mask.bin", dtype=np.uint8)
    for prompt, chosen, rejected in pairs:
        for reply in (chosen, rejected):
            ids = np.asarray(list(prompt) + list(reply), dtype=np.int64)
            mask = np.asarray([0] * len(prompt) + [1] * len(reply), dtype=np.uint8)
            tokens.add_document(ids, [len(ids)])
            masks.add_document(mask, [len(mask)])
    tokens.finalize(out + ".idx")
    masks.finalize(out + "_loss_mask.idx")
    with open(out + ".json", "w") as f:
        json.dump({"kind": "preference", "chat_format": None, "tokenizer_type": "NullTokenizer",
                   "tokenizer_model": None, "special_tokens": [], "vocab_size": vocab_size,
                   "seq_length": seq_length, "pairs": len(pairs)}, f)
    return out


def copy_task(n_pairs: int, seed: int, vocab: int = 32, prompt_len=(3, 7), reply_len=(2, 6)):
    """Pairs whose chosen reply continues the prompt by a rule (each prompt token + vocab/2, in order) and
    whose rejected reply is random tokens of the same range: learnable from the prompt, not a constant."""
    rng = np.random.default_rng(seed)
    half = vocab // 2
    pairs = []
    for _ in range(n_pairs):
        prompt = rng.integers(0, half, rng.integers(*prompt_len)).tolist()
        n = int(rng.integers(*reply_len))
        chosen = [(t + half) for t in (prompt * n)[:n]]
        rejected = rng.integers(half, vocab, n).tolist()
        if rejected == chosen:
            rejected[0] = half + (chosen[0] - half + 1) % half
        pairs.append((prompt, chosen, rejected))
    return pairs
