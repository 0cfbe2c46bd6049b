"""Subprocess of test_mup_coord_check_model.py: coordinate-check sweeps of the real model
(megatron_ext/training/coord_check.py), some with one μP rule deliberately broken.

    python tests/mup/coord_check_worker.py OUT_JSON SWEEPS_JSON

SWEEPS_JSON maps a sweep name to {"setup": Setup fields, "parametrization": "sp" | "mup", "plant": a PLANTS
key}. Writes {name: results} (mup.coord_check Results, widths as strings). The model is built in this process
(megatron's CPU redirection stays on for the life of a process, so not in pytest's); the planted bugs patch
MuPRules here, which every width's build then uses.
"""

import json
import math
import sys
from contextlib import nullcontext
from unittest import mock

from mup import MuPRules

_lr_multiplier = MuPRules.lr_multiplier


def _fc1_lr_not_scaled(self, name_or_class):
    """MLP up projection trained at the base LR: its Adam LR is not divided by m."""
    if isinstance(name_or_class, str) and ".linear_fc1." in name_or_class:
        return 1.0
    return _lr_multiplier(self, name_or_class)


PLANTS = {
    "none": nullcontext,
    "fc1_lr_not_scaled": lambda: mock.patch.object(MuPRules, "lr_multiplier", _fc1_lr_not_scaled),
    # Standard attention's 1/sqrt(head_dim) where μP needs 1/head_dim.
    "attention_scale_sqrt_d": lambda: mock.patch.object(
        MuPRules, "softmax_scale", lambda self, head_dim=None: 1.0 / math.sqrt(head_dim or self.cfg.head_dim)),
    # Logits not multiplied by alpha/m.
    "no_output_multiplier": lambda: mock.patch.object(MuPRules, "output_multiplier", property(lambda self: 1.0)),
}


def main(out_path: str, sweeps_json: str) -> None:
    from megatron_ext.platform import init_distributed
    from megatron_ext.training.coord_check import Setup, run

    device = init_distributed("cpu").device
    results = {}
    for name, sweep in json.loads(sweeps_json).items():
        setup = Setup(**{k: tuple(v) if isinstance(v, list) else v for k, v in sweep["setup"].items()})
        with PLANTS[sweep.get("plant", "none")]():
            by_width = run(setup, (sweep["parametrization"],), device, progress=None)[sweep["parametrization"]]
        results[name] = {str(width): coords for width, coords in by_width.items()}
        print(f"{name}: done", flush=True)
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
