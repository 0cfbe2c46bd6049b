"""DPO losses over per-reply log-probability sums, and the reward metrics under TRL's names.

Everything here works on per-pair tensors (one entry per preference pair): the sums of the per-token
log-probabilities of the chosen and of the rejected reply (reply tokens only: the prompt is conditioned on,
never scored) under the policy and under the reference model. How those sums are obtained (a plain
log-softmax, the vocabulary-parallel cross entropy under TP, packed rows) is the caller's concern: see
`sequence_logps` and `megatron_ext/preference/step.py`.

The formulas follow the papers and TRL 0.28's `DPOTrainer.dpo_loss` / `concatenated_forward`, which the tests
call on the same logits (tests/preference/test_preference_loss_trl.py):

- sigmoid (DPO, Rafailov et al. 2023, eq. 7) with label smoothing eps (conservative DPO, Mitchell 2023, eq. 3):
  ``-(1 - eps) * logsigmoid(beta * h) - eps * logsigmoid(-beta * h)`` with
  ``h = (pi_c - pi_r) - (ref_c - ref_r)``;
- IPO (Azar et al. 2023, eq. 17): ``(h - 1 / (2 * beta)) ** 2`` where, as in TRL, every log-probability is
  first divided by its reply's token count (the per-token mean, which TRL confirmed with the IPO authors is
  what the paper's results use); the logged ``logps/*`` and ``rewards/*`` are then those means too, as TRL
  0.28 logs them.

Rewards are ``beta * (policy - reference)`` per reply; accuracy counts pairs whose chosen reward is strictly
greater (so 0 at step 0, when policy == reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")

# The metric names TRL logs (DPOTrainer.get_batch_loss_metrics), in the order the log prints them.
METRIC_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected")


@dataclass(frozen=True)
class DPOConfig:
    """The loss's hyperparameters (flags --dpo-beta, --dpo-loss, --dpo-label-smoothing)."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"--dpo-loss {self.loss_type!r}: expected one of {', '.join(LOSS_TYPES)}")
        if not self.beta > 0:
            raise ValueError(f"--dpo-beta {self.beta}: must be > 0 (it divides IPO's target margin and "
                             "scales the DPO logits)")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"--dpo-label-smoothing {self.label_smoothing}: must lie in [0, 0.5) (the "
                             "probability that a preference label is flipped)")
        if self.loss_type == "ipo" and self.label_smoothing:
            raise ValueError("--dpo-label-smoothing applies to --dpo-loss sigmoid only (IPO has no "
                             "label-smoothed form); drop one of the two flags")


def per_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels[..., t] | logits[..., t, :]) in the logits' dtype (single process, full vocabulary).
    Under TP the trainer uses -vocab_parallel_cross_entropy instead (contract item 5): the same numbers."""
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(token_logps: torch.Tensor, loss_mask: torch.Tensor, segment_ids: torch.Tensor,
                   num_segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-segment sums of masked per-token log-probabilities, and per-segment trained-token counts.

    token_logps, loss_mask, segment_ids: same shape (any); segment_ids in [0, num_segments) name the
    sequence each position belongs to (positions of no sequence, e.g. padding, carry loss_mask 0).
    Returns two float tensors of shape [num_segments]. A scatter-add rather than a Python loop, so the
    gradient flows to every token of every packed sequence at once."""
    mask = loss_mask.to(token_logps.dtype)
    flat_ids = segment_ids.reshape(-1).long()
    sums = torch.zeros(num_segments, dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, flat_ids, (token_logps * mask).reshape(-1))
    counts = torch.zeros(num_segments, dtype=token_logps.dtype, device=token_logps.device)
    counts = counts.index_add(0, flat_ids, mask.reshape(-1))
    return sums, counts


@dataclass
class PairTerms:
    """Per-pair results of `dpo_losses` (all shape [pairs])."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_logps: torch.Tensor     # the policy's (per-token means for IPO, as TRL logs them)
    rejected_logps: torch.Tensor


def dpo_losses(cfg: DPOConfig, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
               ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
               chosen_tokens: torch.Tensor | None = None,
               rejected_tokens: torch.Tensor | None = None) -> PairTerms:
    """The per-pair loss (not yet averaged) and rewards from per-reply log-probability sums.

    chosen_tokens / rejected_tokens: each reply's number of scored tokens (needed by IPO only)."""
    ref_chosen = ref_chosen.to(policy_chosen.dtype)
    ref_rejected = ref_rejected.to(policy_rejected.dtype)
    if cfg.loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("IPO needs each reply's token count (it averages log-probabilities per token)")
        chosen_n = chosen_tokens.to(policy_chosen.dtype)
        rejected_n = rejected_tokens.to(policy_rejected.dtype)
        policy_chosen, ref_chosen = policy_chosen / chosen_n, ref_chosen / chosen_n
        policy_rejected, ref_rejected = policy_rejected / rejected_n, ref_rejected / rejected_n
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if cfg.loss_type == "sigmoid":
        eps = cfg.label_smoothing
        losses = -F.logsigmoid(cfg.beta * h) * (1 - eps) - F.logsigmoid(-cfg.beta * h) * eps
    else:
        losses = (h - 1 / (2 * cfg.beta)) ** 2
    return PairTerms(
        losses=losses,
        chosen_rewards=cfg.beta * (policy_chosen - ref_chosen).detach(),
        rejected_rewards=cfg.beta * (policy_rejected - ref_rejected).detach(),
        chosen_logps=policy_chosen.detach(),
        rejected_logps=policy_rejected.detach(),
    )


def metric_sums(terms: PairTerms) -> torch.Tensor:
    """[len(METRIC_NAMES)] sums over the pairs given (float64): summed over micro-batches and data-parallel
    ranks, then divided by the number of pairs, they give TRL's batch means exactly."""
    return torch.stack([
        terms.chosen_rewards.sum(),
        terms.rejected_rewards.sum(),
        (terms.chosen_rewards > terms.rejected_rewards).to(terms.chosen_rewards.dtype).sum(),
        (terms.chosen_rewards - terms.rejected_rewards).sum(),
        terms.chosen_logps.sum(),
        terms.rejected_logps.sum(),
    ]).double()


def metrics_from_sums(sums: torch.Tensor, num_pairs: float) -> dict[str, float]:
    """TRL's metric dict from `metric_sums` accumulated over num_pairs pairs."""
    if num_pairs <= 0:
        return {}
    return {name: float(value) / num_pairs for name, value in zip(METRIC_NAMES, sums.tolist())}


def dpo_batch(cfg: DPOConfig, policy_chosen, policy_rejected, ref_chosen, ref_rejected,
              chosen_tokens=None, rejected_tokens=None) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over the pairs and TRL's metric dict: the one-process form (tests, evaluation)."""
    terms = dpo_losses(cfg, policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                       chosen_tokens, rejected_tokens)
    return terms.losses.mean(), metrics_from_sums(metric_sums(terms), terms.losses.numel())
