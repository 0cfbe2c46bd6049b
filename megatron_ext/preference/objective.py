"""What the training loop needs to train DPO instead of next-token prediction: the micro-batch step and how
a global batch's reported sums become its loss and logged metrics. pretrain.py builds it (after the
reference pass) when --data-path is preference data and hands it to the loop."""

from __future__ import annotations

from megatron_ext.preference.loss import DPOConfig
from megatron_ext.preference.step import dpo_totals, make_forward_step


class DPOObjective:
    def __init__(self, cfg: DPOConfig):
        self.cfg = cfg
        self.forward_step = make_forward_step(cfg)

    def loss_and_totals(self, losses_reduced) -> tuple[float | None, dict | None]:
        """(mean loss over the global batch's pairs, {"loss", "pairs", TRL's metrics}) on the last pipeline
        stage; (None, None) elsewhere and for a batch without pairs."""
        totals = dpo_totals(losses_reduced)
        return (totals["loss"] if totals else None), totals


def prepare_dpo(run) -> DPOObjective:
    """The reference log-probs (computed from the starting weights, or loaded on resume), then the objective.
    Collective: every rank calls it, before the first training step."""
    from megatron_ext.preference.arguments import dpo_config
    from megatron_ext.preference.reference import attach_reference

    try:
        cfg = dpo_config(run.config.flags)  # before the pass: a bad flag costs nothing
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    attach_reference(run)
    return DPOObjective(cfg)
