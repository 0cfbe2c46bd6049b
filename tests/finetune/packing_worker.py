"""torchrun worker (one process) for test_packing.py: the same conversations as packed rows, as padded rows
(one per row), and each alone, through the real model (layer spec, kernels, core attention) built by the
project's builders. Records, per precision:

  loss:   {"packed", "padded"}: mean CE over the trained tokens of all rows (the fine-tuning loss);
  grads:  max |packed - padded| / max |padded| over every parameter's gradient;
  alone:  max |logits of a conversation inside its packed row - logits of it run alone| / max |alone|.

argv: OUT_JSON SEQ_LENGTH PRETRAIN_FLAGS...
"""

import json
import sys

import numpy as np
import torch

from megatron_ext.arguments import parse_config
from megatron_ext.platform import init_distributed

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from sft_files import random_conversations  # noqa: E402


def batch_of(rows, seq_length: int, conversations) -> dict:
    from megatron_ext.data.packing import build_row

    samples = [build_row([(np.asarray(conversations[u][0]), np.asarray(conversations[u][1], np.float32))
                          for u in row], seq_length, 0) for row in rows]
    return {key: torch.as_tensor(np.stack([s[key] for s in samples])) for key in samples[0]}


def logits_and_loss(chunk, batch):
    from megatron_ext.training.step import language_model_logits, packed_seq_params

    module = chunk.module
    packed = packed_seq_params(batch["position_ids"])
    logits = module(batch["tokens"], batch["position_ids"], None, packed_seq_params=packed)  # [b, s, v]
    logits = language_model_logits(logits, module.config, module.true_vocab_size)
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none")
    mask = batch["loss_mask"].flatten()
    return logits, (losses * mask).sum() / mask.sum()


def gradients(chunk, loss) -> dict:
    chunk.zero_grad_buffer()
    loss.backward()
    return {name: p.main_grad.detach().clone() for name, p in chunk.module.named_parameters()}


def measure(argv: list[str], seq_length: int, platform) -> dict:
    from megatron_ext.data.packing import PAD, PACK, plan_rows
    from megatron_ext.training.build import build_trainable
    from megatron_ext.training.step import language_model_logits

    config = parse_config(argv).with_vocab(256)
    chunk = build_trainable(config, platform.device).model[0]
    conversations = random_conversations(7, 256, seed=3, max_len=seq_length)
    lengths = np.asarray([len(ids) for ids, _ in conversations])
    order = np.arange(len(conversations))
    packed_rows = plan_rows(order, lengths, seq_length, PACK, "truncate")
    padded_rows = plan_rows(order, lengths, seq_length, PAD, "truncate")
    assert len(packed_rows) < len(padded_rows) and max(len(r) for r in packed_rows) > 1
    packed_batch, padded_batch = batch_of(packed_rows, seq_length, conversations), batch_of(padded_rows, seq_length,
                                                                                            conversations)
    packed_logits, packed_loss = logits_and_loss(chunk, packed_batch)
    packed_grads = gradients(chunk, packed_loss)
    _, padded_loss = logits_and_loss(chunk, padded_batch)
    padded_grads = gradients(chunk, padded_loss)
    grad_error = max(float((packed_grads[n] - padded_grads[n]).abs().max() / padded_grads[n].abs().max().clamp_min(1e-30))
                     for n in padded_grads)
    alone_error = 0.0
    with torch.no_grad():
        for r, row in enumerate(packed_rows):
            start = 0
            for unit in row:
                n = len(conversations[unit][0]) - 1
                ids = torch.as_tensor(conversations[unit][0][:n])[None]
                alone = chunk.module(ids, torch.arange(n)[None], None)
                alone = language_model_logits(alone, chunk.module.config, chunk.module.true_vocab_size)[0]
                inside = packed_logits[r, start:start + n].detach()
                alone_error = max(alone_error, float((inside - alone).abs().max() / alone.abs().max()))
                start += n
    return {"loss": {"packed": packed_loss.item(), "padded": padded_loss.item()}, "grads": grad_error,
            "alone": alone_error, "rows": [len(packed_rows), len(padded_rows)]}


def main(out: str, seq_length: int, argv: list[str]) -> None:
    config = parse_config(argv)
    platform = init_distributed(config.parallel.device)
    from megatron_ext.training.parallel import initialize_parallel

    initialize_parallel(config.parallel, config.training.seed)
    results = {"fp32": measure(argv, seq_length, platform), "bf16": measure(argv + ["--bf16"], seq_length, platform)}
    with open(out, "w") as f:
        json.dump(results, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
