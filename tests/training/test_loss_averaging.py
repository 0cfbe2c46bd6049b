"""The logged `lm loss` is the mean over tokens, not over micro-batches: micro-batches with different numbers
of loss tokens (FIM padding, masked tokens) weigh by their token counts."""

import torch

from megatron_ext.training import loop, step


def test_logged_loss_is_token_weighted_across_micro_batches(monkeypatch):
    monkeypatch.setattr(loop.parallel_state, "is_pipeline_last_stage", lambda **kw: True)
    monkeypatch.setattr(loop.parallel_state, "get_data_parallel_group", lambda **kw: None)
    monkeypatch.setattr(loop.dist, "all_reduce", lambda tensor, group=None: None)  # one data-parallel rank
    # The project's loss function on two micro-batches of 8 tokens, the second with 6 tokens masked out;
    # the vocabulary-parallel cross entropy is replaced by torch's (one tensor-parallel rank).
    monkeypatch.setattr(step.tensor_parallel, "vocab_parallel_cross_entropy",
                        lambda lg, lb: torch.nn.functional.cross_entropy(
                            lg.transpose(0, 1).flatten(0, 1), lb.flatten(), reduction="none").view(lb.shape))
    monkeypatch.setattr(step, "language_model_logits", lambda lg, cfg, v: lg)
    torch.manual_seed(0)
    config = type("Config", (), {"logits_multiplier": 1.0})()
    vocab = 16
    entries, all_losses = [], []
    for masked in (0, 6):
        logits = torch.randn(8, 1, vocab)  # [sequence, batch, vocabulary]
        labels = torch.randint(0, vocab, (1, 8))
        mask = torch.ones(1, 8)
        mask[0, :masked] = 0
        loss_sum, num_tokens, reported = step.loss_func(config, vocab, labels, mask, None, logits)
        per_token = torch.nn.functional.cross_entropy(logits[:, 0], labels[0], reduction="none")
        all_losses.append(per_token[masked:])
        assert int(num_tokens) == 8 - masked
        entries.append(reported)
    expected = torch.cat(all_losses).mean().item()  # 8 + 2 tokens, each counted once
    per_micro_batch = sum(x.mean().item() for x in all_losses) / 2
    assert abs(expected - per_micro_batch) > 1e-3  # the two averages differ on this batch
    assert abs(loop.average_loss(entries) - expected) < 1e-6
