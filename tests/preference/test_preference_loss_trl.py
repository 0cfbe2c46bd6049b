"""The DPO loss, its gradient and TRL's reward metrics against TRL's own DPOTrainer code on the same logits.

TRL (pinned in requirements/ci.txt: 0.28.0, the last release whose sigmoid loss has conservative-DPO label
smoothing) is driven through its real methods: `DPOTrainer.concatenated_forward` (prompt + reply
concatenation, left flush, shift, `selective_log_softmax`, the per-token mean for IPO) and
`DPOTrainer.get_batch_loss_metrics` -> `dpo_loss`. Only the trainer object is built without `__init__`
(which needs a model, a dataset and `TrainingArguments`), with the attributes those methods read.

The model is a lookup table: the logits at a position are a row chosen by the token there, so TRL's padded,
left-flushed layout and our packed layout (every sequence of the batch in one row, as the trainer packs them)
see the same logits for the same tokens, which is what "on the same logits" means here.
"""

from types import SimpleNamespace

import pytest
import torch

from megatron_ext.preference.loss import DPOConfig, METRIC_NAMES, dpo_batch, per_token_logps, sequence_logps



def _import_trl_dpo():
    """TRL 0.28's `is_*_available` helpers expect transformers' `_is_package_available` to return a bool;
    transformers 5 returns (available, version), a truthy tuple, so `import weave` runs and fails. Give TRL
    the bool (only TRL's own copy of the name is replaced), then import its DPO trainer."""
    import importlib

    import transformers.utils.import_utils as hf_import_utils
    trl_import_utils = importlib.import_module("trl.import_utils")

    def is_available(name, return_version=False):
        found = hf_import_utils._is_package_available(name, return_version)
        return found if return_version else found[0]

    trl_import_utils._is_package_available = is_available
    return importlib.import_module("trl.trainer.dpo_trainer")


trl_dpo = _import_trl_dpo()

VOCAB = 23
PAD = 0


class TableModel(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: depends on the token only, never on padding or position."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])


def make_pairs(seed, n_pairs=5):
    g = torch.Generator().manual_seed(seed)

    def seq(lo, hi):
        n = int(torch.randint(lo, hi, (1,), generator=g))
        return torch.randint(1, VOCAB, (n,), generator=g).tolist()

    return [(seq(2, 7), seq(1, 9), seq(1, 9)) for _ in range(n_pairs)]  # (prompt, chosen, rejected)


def trl_batch(pairs):
    """TRL's collated layout: prompts left-padded, completions right-padded."""
    def pad(rows, left):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), PAD, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, sl] = torch.tensor(r)
            mask[i, sl] = 1
        return ids, mask

    batch = {}
    for key, rows, left in (("prompt", [p for p, _, _ in pairs], True),
                            ("chosen", [c for _, c, _ in pairs], False),
                            ("rejected", [r for _, _, r in pairs], False)):
        batch[f"{key}_input_ids"], batch[f"{key}_attention_mask"] = pad(rows, left)
    return batch


def trl_trainer(beta, loss_type, label_smoothing):
    trainer = trl_dpo.DPOTrainer.__new__(trl_dpo.DPOTrainer)
    trainer.__dict__.update(
        beta=beta, label_smoothing=label_smoothing, loss_type=[loss_type], loss_weights=None,
        reference_free=False, f_divergence_type=trl_dpo.FDivergenceType.REVERSE_KL, f_divergence_params={},
        pad_token_id=PAD, aux_loss_enabled=False, is_encoder_decoder=False, max_length=None,
        truncation_mode="keep_end", padding_free=False, use_logits_to_keep=False, use_weighting=False,
        args=SimpleNamespace(use_liger_kernel=False, rpo_alpha=None, ld_alpha=None),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda t: t),
    )
    return trainer


def trl_loss_and_metrics(trainer, policy, reference, pairs):
    batch = trl_batch(pairs)
    with torch.no_grad():
        ref = trainer.concatenated_forward(reference, batch, is_ref_model=True)
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref["chosen_logps"], ref["rejected_logps"]
    loss, metrics = trainer.get_batch_loss_metrics(policy, batch)
    return loss, metrics


def packed_logps(table, pairs):
    """Our path: all 2 * pairs sequences packed into one row (prompt + reply each, chosen then rejected per
    pair), labels shifted within each sequence, reply tokens masked in, sums per sequence."""
    tokens, labels, mask, segments = [], [], [], []
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        for j, reply in enumerate((chosen, rejected)):
            seq = prompt + reply
            tokens += seq
            labels += seq[1:] + [PAD]
            mask += [0] * (len(prompt) - 1) + [1] * len(reply) + [0]
            segments += [2 * i + j] * len(seq)
    tokens, labels = torch.tensor([tokens]), torch.tensor([labels])
    logps = per_token_logps(table[tokens], labels)
    sums, counts = sequence_logps(logps, torch.tensor([mask]), torch.tensor([segments]), 2 * len(pairs))
    return sums[0::2], sums[1::2], counts[0::2], counts[1::2]


@pytest.mark.parametrize("loss_type,label_smoothing,beta", [
    ("sigmoid", 0.0, 0.1), ("sigmoid", 0.2, 0.5), ("ipo", 0.0, 0.1)])
def test_loss_gradient_and_metrics_equal_trl(loss_type, label_smoothing, beta):
    pairs = make_pairs(seed=7)
    g = torch.Generator().manual_seed(3)
    ref_table = torch.randn(VOCAB, VOCAB, generator=g, dtype=torch.float64)
    # The policy has moved away from the reference, so losses, rewards and accuracies are not at their
    # step-0 values (where a wrong sign or a swapped pair could still agree).
    policy_init = ref_table + 2.0 * torch.randn(VOCAB, VOCAB, generator=g, dtype=torch.float64)

    trl_table = policy_init.clone().requires_grad_(True)
    trainer = trl_trainer(beta, loss_type, label_smoothing)
    trl_loss, trl_metrics = trl_loss_and_metrics(trainer, TableModel(trl_table), TableModel(ref_table), pairs)
    trl_loss.backward()

    table = policy_init.clone().requires_grad_(True)
    pc, pr, nc, nr = packed_logps(table, pairs)
    with torch.no_grad():
        rc, rr, _, _ = packed_logps(ref_table, pairs)
    cfg = DPOConfig(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    loss, metrics = dpo_batch(cfg, pc, pr, rc, rr, nc, nr)
    loss.backward()

    assert 0 < trl_metrics["rewards/accuracies"] < 1, trl_metrics  # a mixed batch: accuracy is exercised
    assert abs(loss.item() - trl_loss.item()) <= 1e-6 * max(1.0, abs(trl_loss.item()))
    for name in METRIC_NAMES:
        assert metrics[name] == pytest.approx(trl_metrics[name], rel=1e-6, abs=1e-6), name
    torch.testing.assert_close(table.grad, trl_table.grad, rtol=1e-6, atol=1e-9)
    assert table.grad.abs().sum() > 0


def test_step_zero_is_log_two_with_zero_margins():
    """Policy == reference: h = 0, so the sigmoid loss is log 2 whatever the smoothing; rewards are 0 and no
    pair counts as won (TRL's strict '>')."""
    g = torch.Generator().manual_seed(0)
    logps_c, logps_r = -torch.rand(6, generator=g) * 30, -torch.rand(6, generator=g) * 30
    for eps in (0.0, 0.3):
        loss, metrics = dpo_batch(DPOConfig(label_smoothing=eps), logps_c, logps_r, logps_c, logps_r)
        assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-7)
        assert metrics["rewards/accuracies"] == 0 and metrics["rewards/margins"] == 0


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="--dpo-loss"):
        DPOConfig(loss_type="hinge")
    with pytest.raises(ValueError, match="--dpo-beta"):
        DPOConfig(beta=0)
    with pytest.raises(ValueError, match="--dpo-label-smoothing"):
        DPOConfig(label_smoothing=0.5)
    with pytest.raises(ValueError, match="sigmoid only"):
        DPOConfig(loss_type="ipo", label_smoothing=0.1)
