"""The coordinate check of the real model (megatron_ext/training/coord_check.py) fails when a μP rule is wrong.

Each sweep trains the default Setup (2 layers, 8 steps on one small batch) at several widths; the check's
verdict is mup.coord_check.growing_modules: the modules whose mean |activation| grows with width. Correct μP
has none, with width grown through the head count and through the head dim, and with Crystal's multipliers;
SP and each planted bug (tests/mup/coord_check_worker.py: fc1 trained at the base LR, attention scaled by
1/sqrt(head_dim), logits without the output multiplier) are flagged in the modules the bug acts on.
The coordinate check over depth (1 to 8 layers at the base width): μP without depth scaling is flagged
(the residual stream grows with depth), depth-μP (--mup-base-num-layers 1) is not.
All sweeps run in one worker process (~40 s on 2 CPU cores, plus ~35 s for the depth sweeps).
"""

import json
import math
import subprocess
import sys

import pytest
import torch
from launch import REPO
from launch import subprocess_env as launch_env

from megatron_ext.training.coord_check import Setup, attention_logits
from mup.coord_check import growing_modules, module_slopes

HEADS = {"widths": [64, 128, 256, 512], "vary": "heads"}
# Through head dim (4 heads, head dim 16 to 256): the attention scale only matters when head dim grows.
HEAD_DIM = {"widths": [64, 128, 256, 512, 1024], "vary": "head_dim"}
CRYSTAL = {**HEAD_DIM, "preset": "tiny-crystal", "init_std": None}  # its sigma_base 0.073, x14.6, x2.22/m, 1/d
DCLM = {**HEAD_DIM, "preset": "tiny-dclm"}  # gain-only LayerNorm, the query/key norm over all heads
# Over depth at width 32 (2 heads of 16), base depth 1, 6 steps: results keyed by depth.
DEPTH = {"vary": "depth", "depths": [1, 2, 4, 8], "base_width": 32, "base_depth": 1, "steps": 6}

SWEEPS = {
    "mup": {"setup": HEADS, "parametrization": "mup"},
    "sp": {"setup": HEADS, "parametrization": "sp"},
    "fc1_lr_not_scaled": {"setup": HEADS, "parametrization": "mup", "plant": "fc1_lr_not_scaled"},
    "no_output_multiplier": {"setup": HEADS, "parametrization": "mup", "plant": "no_output_multiplier"},
    "mup_head_dim": {"setup": HEAD_DIM, "parametrization": "mup"},
    "attention_scale_sqrt_d": {"setup": HEAD_DIM, "parametrization": "mup", "plant": "attention_scale_sqrt_d"},
    "crystal_head_dim": {"setup": CRYSTAL, "parametrization": "mup"},
    "dclm_head_dim": {"setup": DCLM, "parametrization": "mup"},
    "depth_without_depth_mup": {"setup": DEPTH, "parametrization": "mup"},
    "depth_mup": {"setup": DEPTH, "parametrization": "depth-mup"},
}
LAYERS = range(Setup.num_layers)


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    """{sweep: {growing module: slope}} and the raw results."""
    out = tmp_path_factory.mktemp("coord") / "sweeps.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests/mup/coord_check_worker.py"), str(out),
                           json.dumps(SWEEPS)], cwd=REPO, env=launch_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    return {name: growing_modules({"run": by_width})["run"] for name, by_width in results.items()}, results


def test_correct_mup_passes(verdicts):
    growing, results = verdicts
    for sweep in ("mup", "mup_head_dim", "crystal_head_dim", "dclm_head_dim"):
        assert growing[sweep] == {}, (sweep, growing[sweep])
    # Every linear layer's output and the attention logits are among what the check looked at.
    recorded = set(results["mup"]["64"])
    for i in LAYERS:
        for module in ("self_attention.linear_qkv", "self_attention.attention_logits", "self_attention.linear_proj",
                       "mlp.linear_fc1", "mlp.linear_fc2", ""):
            assert f"decoder.layers.{i}{'.' if module else ''}{module}" in recorded, module
    assert {"embedding", "decoder.final_layernorm", "logits"} <= recorded


def test_standard_parametrization_is_flagged(verdicts):
    growing, _ = verdicts
    for i in LAYERS:  # the residual stream, every hidden linear layer and the attention logits
        for module in ("", ".self_attention.linear_proj", ".self_attention.attention_logits", ".mlp.linear_fc1",
                       ".mlp.linear_fc2"):
            assert f"decoder.layers.{i}{module}" in growing["sp"], (module, growing["sp"])
    assert "logits" in growing["sp"]


def test_fc1_lr_not_scaled_is_flagged(verdicts):
    growing, _ = verdicts
    for i in LAYERS:  # fc1's own output, and fc2 and the residual stream downstream of it
        for module in (".mlp.linear_fc1", ".mlp.linear_fc2", ""):
            assert f"decoder.layers.{i}{module}" in growing["fc1_lr_not_scaled"], growing["fc1_lr_not_scaled"]
    assert not any("attention" in m for m in growing["fc1_lr_not_scaled"])


def test_attention_scale_sqrt_d_is_flagged(verdicts):
    growing, _ = verdicts
    flagged = growing["attention_scale_sqrt_d"]
    assert any(f"decoder.layers.{i}.self_attention.attention_logits" in flagged for i in LAYERS), flagged
    assert all("attention_logits" in m for m in flagged), flagged


def test_missing_output_multiplier_is_flagged(verdicts):
    growing, _ = verdicts
    assert set(growing["no_output_multiplier"]) == {"logits"}


def test_head_dim_sweep_and_crystal_multipliers_are_what_ran(verdicts):
    """At init q.k of independent q and k grows like sqrt(head_dim): scaled by 1/head_dim the attention logits
    shrink like head_dim^-1/2 when the sweep grows the head dim (and stay flat when it grows the head count, or
    with the planted 1/sqrt(head_dim)). The Crystal sweep's embedding output carries Crystal's x14.6."""
    _, results = verdicts
    at_init = {name: module_slopes({"run": results[name]}, step=0)["run"]["decoder.layers.0.self_attention.attention_logits"]
               for name in ("mup", "mup_head_dim", "crystal_head_dim", "attention_scale_sqrt_d")}
    assert at_init["mup_head_dim"] == pytest.approx(-0.5, abs=0.1), at_init
    assert at_init["crystal_head_dim"] == pytest.approx(-0.5, abs=0.1), at_init
    assert at_init["mup"] == pytest.approx(0.0, abs=0.1), at_init
    assert at_init["attention_scale_sqrt_d"] == pytest.approx(0.0, abs=0.1), at_init
    # Truncated normal (+-2 sigma) with sigma 0.073: E|x| = sigma sqrt(2/pi) (1 - e^-2) / erf(sqrt 2).
    mean_abs = 0.073 * math.sqrt(2 / math.pi) * (1 - math.exp(-2)) / math.erf(math.sqrt(2))
    assert results["crystal_head_dim"]["64"]["embedding"][0] == pytest.approx(14.6 * mean_abs, rel=0.1)


def test_depth_check_flags_mup_without_depth_scaling(verdicts):
    """Without depth-μP, each layer's Adam update adds an O(1) change to the residual stream, so the last
    layer's output grows with the number of layers: flagged. Depth-μP (branches x 1/sqrt(L), the layers' LR
    x 1/sqrt(L)) keeps every module flat. The two start from the same model (the residual-out init counts
    the base depth, the branch multiplier the rest), and at the base depth they are the same run."""
    growing, results = verdicts
    assert "decoder.layers.last" in growing["depth_without_depth_mup"], growing["depth_without_depth_mup"]
    assert growing["depth_mup"] == {}, growing["depth_mup"]
    plain, deep = results["depth_without_depth_mup"], results["depth_mup"]
    for depth in ("2", "4", "8"):
        for module in ("decoder.layers.last", "logits"):
            assert deep[depth][module][0] == pytest.approx(plain[depth][module][0], rel=1e-4), (depth, module)
        assert deep[depth]["decoder.layers.last"][-1] != pytest.approx(plain[depth]["decoder.layers.last"][-1],
                                                                      rel=1e-3)
    assert deep["1"] == plain["1"]


def test_attention_logits_are_causal_scaled_scores():
    gen = torch.Generator().manual_seed(0)
    seq, batch, heads, groups, dim = 5, 2, 4, 2, 8
    query = torch.randn(seq, batch, heads, dim, generator=gen)
    key = torch.randn(seq, batch, groups, dim, generator=gen)
    logits = attention_logits(query, key, 0.125)
    assert logits.shape == (batch, heads, seq * (seq + 1) // 2)
    # Query head h reads key group h // (heads / groups); query position i sees keys 0..i.
    expected = [0.125 * query[i, b, h] @ key[j, b, h // 2] for b in range(batch) for h in range(heads)
                for i in range(seq) for j in range(i + 1)]
    assert torch.allclose(logits.flatten(), torch.stack(expected), atol=1e-6)
