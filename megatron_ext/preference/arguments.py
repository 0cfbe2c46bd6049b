"""DPO's flags. DPO runs when the --data-path prefixes are preference data (tools/preprocess_preference.py
writes PREFIX_preference.json with "kind": "preference"); these flags set its loss."""

from __future__ import annotations

import argparse

from megatron_ext.preference.loss import LOSS_TYPES, DPOConfig


def add_dpo_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("preference optimisation (DPO; on when --data-path is preference data)")
    g.add_argument("--dpo-beta", type=float, default=0.1,
                   help="DPO's beta: the strength of the pull towards the reference model (IPO: its tau)")
    g.add_argument("--dpo-loss", choices=LOSS_TYPES, default="sigmoid",
                   help="sigmoid (DPO) or ipo (squared loss on per-token mean log-ratios)")
    g.add_argument("--dpo-label-smoothing", type=float, default=0.0,
                   help="conservative DPO: the probability that a preference label is flipped, in [0, 0.5)")


def dpo_config(flags) -> DPOConfig:
    """The loss's configuration from the parsed flags (an argparse namespace or the RunConfig's flags)."""
    return DPOConfig(beta=getattr(flags, "dpo_beta", 0.1), loss_type=getattr(flags, "dpo_loss", "sigmoid"),
                     label_smoothing=getattr(flags, "dpo_label_smoothing", 0.0))


def validate_dpo(args) -> None:
    """Start-up check (raises SystemExit naming the flag): the loss's hyperparameters."""
    try:
        dpo_config(args)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
