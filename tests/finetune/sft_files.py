"""Conversation data files for the fine-tuning tests, written directly in the layout tools/preprocess_sft.py
writes (PREFIX.bin/.idx token ids, PREFIX_loss_mask.bin/.idx 0/1), so trainer tests do not depend on a chat
format: each conversation is a prompt (masked) followed by a reply (trained)."""

import json

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder


def write_conversations(prefix: str, conversations: list[tuple[list[int], list[int]]], vocab_size: int) -> str:
    """conversations: (token ids, loss mask) pairs. Returns the prefix to pass in --data-path."""
    tokens = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    masks = IndexedDatasetBuilder(prefix + "_loss_mask.bin", dtype=np.uint8)
    for ids, mask in conversations:
        assert len(ids) == len(mask)
        tokens.add_document(np.asarray(ids, dtype=np.int32), [len(ids)])
        masks.add_document(np.asarray(mask, dtype=np.uint8), [len(mask)])
    tokens.finalize(prefix + ".idx")
    masks.finalize(prefix + "_loss_mask.idx")
    with open(prefix + ".json", "w") as f:
        json.dump({"kind": "sft", "vocab_size": vocab_size, "special_tokens": []}, f)
    return prefix


def random_conversations(count: int, vocab_size: int, seed: int, min_len: int = 6, max_len: int = 40):
    """Prompts of random ids, replies that repeat the prompt's first tokens (learnable), varied lengths."""
    rng = np.random.default_rng(seed)
    conversations = []
    for _ in range(count):
        prompt_len = int(rng.integers(2, max_len // 2))
        reply_len = int(rng.integers(max(1, min_len - prompt_len), max_len - prompt_len + 1))
        prompt = rng.integers(3, vocab_size, prompt_len).tolist()
        reply = [(prompt[i % prompt_len] + 1) % vocab_size for i in range(reply_len)]
        conversations.append((prompt + reply, [0] * prompt_len + [1] * reply_len))
    return conversations


def write_text(prefix: str, count: int, vocab_size: int, seed: int) -> str:
    """Plain-text documents (as tools/preprocess_data.py writes them): every token trained."""
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for _ in range(count):
        doc = rng.integers(0, vocab_size, int(rng.integers(20, 150)), dtype=np.int32)
        builder.add_document(doc, [len(doc)])
    builder.finalize(prefix + ".idx")
    return prefix
