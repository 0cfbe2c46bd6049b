"""μP inside the real model: what the megatron optimizer actually uses, and what the tools measure.

1. Per-parameter learning rate and weight decay (tests/mup/mup_worker.py, TP2 and PP2): a few real
   training steps through the project's builders and `train_step`, with warm-up and linear decay.
   Each parameter's optimizer-group LR must be the schedule (recomputed here from its formula) x
   its μP class multiplier, at every step, also during a warm-up that starts from --lr-warmup-init > 0;
   weight decay 0 on biases and norm gains only.
2. Initial weight std per class at two widths, from the full (unsharded) tensors.
3. tools/mup_coord_check.py: no activation grows with width under μP; under SP they do.
"""

import csv
import json
import math
import subprocess
import sys

import pytest
from launch import REPO, torchrun_cmd
from launch import subprocess_env as launch_env

from mup import TRUNC_NORMAL_STD_FACTOR, MuPConfig, MuPRules, ParamClass, classify

BASE_HIDDEN, HEAD_DIM, LAYERS, SIGMA = 32, 16, 4, 0.073  # tiny-crystal's μP base and init
ITERS, WARMUP, LR, MIN_LR, WD = 6, 2, 1e-2, 1e-3, 0.1
LR_INIT = 4e-3  # --lr-warmup-init: megatron-core starts every group's warm-up here unless we scale it


def model_args(hidden: int) -> list:
    """tiny-crystal (μP, LayerNorm + biases, tied embeddings) widened with head_dim fixed."""
    return ["--model-preset", "tiny-crystal", "--hidden-size", hidden, "--ffn-hidden-size", hidden * 11 // 4,
            "--num-attention-heads", hidden // HEAD_DIM, "--mock-data", "--device", "cpu",
            "--micro-batch-size", 1, "--global-batch-size", 2, "--train-iters", ITERS, "--seed", 11,
            "--lr", LR, "--min-lr", MIN_LR, "--lr-warmup-init", LR_INIT, "--lr-warmup-iters", WARMUP,
            "--lr-decay-style", "linear", "--weight-decay", WD]


def scheduled_lr(done: int) -> float:
    """Base LR of the step taken after `done` completed steps: linear warm-up from LR_INIT over WARMUP
    steps, then linear decay to MIN_LR at step ITERS (megatron's formula, restated here)."""
    if done <= WARMUP:
        return LR_INIT + (LR - LR_INIT) * done / WARMUP
    if done > ITERS:
        return MIN_LR
    return MIN_LR + (1.0 - (done - WARMUP) / (ITERS - WARMUP)) * (LR - MIN_LR)


def lr_multiplier(param_class: ParamClass, m: float) -> float:
    """μP for Adam (docs/mup.md): 1/m on the matrices whose fan-in grows, 1 elsewhere."""
    return 1.0 / m if param_class in (ParamClass.HIDDEN, ParamClass.RESIDUAL_OUT) else 1.0


def expected_sigma(param_class: ParamClass, m: float) -> float:
    """Truncated-normal sigma (before truncation) per class, written out from docs/mup.md."""
    return {ParamClass.EMBEDDING: SIGMA, ParamClass.OUTPUT: SIGMA, ParamClass.HIDDEN: SIGMA / math.sqrt(m),
            ParamClass.RESIDUAL_OUT: SIGMA / math.sqrt(2 * m * LAYERS)}[param_class]


def run_worker(tmp_path, nproc: int, extra: list) -> list[dict]:
    prefix = tmp_path / "mup"
    cmd = torchrun_cmd(nproc, str(REPO / "tests/mup/mup_worker.py")) + [str(prefix)] + [str(a) for a in extra]
    proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((tmp_path / f"mup.{rank}.json").read_text()) for rank in range(nproc)]


def full_tensor_stats(ranks: list[dict]) -> dict:
    """global name -> (sum, sum of squares, numel) of the whole tensor. Replicated copies (norms on
    every TP rank, the tied embedding's copy on the last stage) are counted once."""
    totals, seen = {}, set()
    for rank in ranks:
        for p in rank["params"]:
            tag = (p["global_name"], p["tp_rank"] if p["split"] else 0)
            if tag in seen:
                continue
            seen.add(tag)
            s, q, n = totals.get(p["global_name"], (0.0, 0.0, 0))
            totals[p["global_name"]] = (s + p["sum"], q + p["sq"], n + p["numel"])
    return totals


# Each layout at its own width (m = 2 and m = 4): both layouts and both widths are covered with two
# launches (~20 s each on 2 CPU cores), and a wrong multiplier cannot hide behind a single m.
CASES = [("tp2", 64, ["--tensor-model-parallel-size", 2]), ("pp2", 128, ["--pipeline-model-parallel-size", 2])]


@pytest.fixture(scope="module", params=CASES, ids=[f"{c[0]}-h{c[1]}" for c in CASES])
def trained(request, tmp_path_factory):
    layout, hidden, extra = request.param
    ranks = run_worker(tmp_path_factory.mktemp(f"{layout}_{hidden}"), 2, model_args(hidden) + extra)
    return layout, hidden, ranks


def test_optimizer_lr_and_weight_decay_follow_mup(trained):
    layout, hidden, ranks = trained
    m = hidden / BASE_HIDDEN
    rules = MuPRules(MuPConfig(hidden_size=hidden, base_hidden_size=BASE_HIDDEN, num_layers=LAYERS,
                               ffn_hidden_size=hidden * 11 // 4, num_attention_heads=hidden // HEAD_DIM,
                               head_dim=HEAD_DIM, base_init_std=SIGMA))
    seen_classes = set()
    for rank in ranks:
        for p in rank["params"]:
            cls = classify(p["name"])
            seen_classes.add(cls)
            assert p["num_groups"] == 1, f"{p['name']} is in {p['num_groups']} optimizer groups"
            mult = lr_multiplier(cls, m)
            assert rules.lr_multiplier(p["name"]) == pytest.approx(mult), p["name"]  # mup.rules agrees
            assert len(p["lr"]) == ITERS + 1
            for done, (lr, wd) in enumerate(zip(p["lr"], p["weight_decay"])):
                assert lr == pytest.approx(scheduled_lr(done) * mult, rel=1e-9, abs=1e-15), \
                    f"{layout}: {p['name']} lr after {done} steps"
                want_wd = 0.0 if cls in (ParamClass.BIAS, ParamClass.NORM) else WD
                assert wd == pytest.approx(want_wd), f"{layout}: {p['name']} weight decay"
    want = {ParamClass.EMBEDDING, ParamClass.HIDDEN, ParamClass.RESIDUAL_OUT, ParamClass.BIAS, ParamClass.NORM}
    if layout == "pp2":
        want.add(ParamClass.OUTPUT)  # the last stage's copy of the tied embedding
    assert want <= seen_classes
    losses = ranks[-1]["losses"]  # the last rank is on the last stage, which computes the loss
    assert len(losses) == ITERS and all(math.isfinite(x) for x in losses)


def test_initial_std_follows_mup(trained):
    layout, hidden, ranks = trained
    m = hidden / BASE_HIDDEN
    for name, (s, q, n) in full_tensor_stats(ranks).items():
        cls = classify(name)
        mean = s / n
        if cls is ParamClass.BIAS:
            assert s == 0.0 and q == 0.0, name
            continue
        if cls is ParamClass.NORM:
            assert s == n and q == n, name
            continue
        std = math.sqrt(q / n - mean**2)
        want = expected_sigma(cls, m) * TRUNC_NORMAL_STD_FACTOR
        # The smallest matrix has 64 x 64 entries: the std estimate's own spread is ~1%.
        assert std == pytest.approx(want, rel=0.04), f"{layout} h{hidden}: {name} std {std:.5f} vs {want:.5f}"
        assert abs(mean) < 5 * want / math.sqrt(n), f"{name} mean {mean}"


def test_coord_check_tool_mup_flat_sp_grows(tmp_path):
    """tools/mup_coord_check.py on the real model, widths 64..512 (~15 s on 2 CPU cores): no module's
    activation grows with width under μP, the residual stream, the hidden linear layers' outputs, the
    attention logits and the logits do under SP (tests/mup/test_mup_coord_check_model.py plants wrong μP
    rules and checks that each is flagged)."""
    out = tmp_path / "coord"
    proc = subprocess.run([sys.executable, str(REPO / "tools/mup_coord_check.py"), "--out", str(out),
                           "--widths", "64,128,256,512"],
                          cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "log-log slope" in proc.stdout and "mup: activations growing with width: none" in proc.stdout
    data = json.loads((out / "coord.json").read_text())
    growing = data["growing_modules"]
    assert growing["mup"] == {}, growing["mup"]
    for layer in ("decoder.layers.0", "decoder.layers.1"):
        for module in ("", ".self_attention.linear_proj", ".self_attention.attention_logits", ".mlp.linear_fc2"):
            assert layer + module in growing["sp"], (layer + module, growing["sp"])
    assert "logits" in growing["sp"]
    # Same init at the base width (m = 1): the recorded activations agree up to the first attention, whose
    # scale is μP's 1/head_dim against SP's 1/sqrt(head_dim).
    for module in ("embedding", "decoder.layers.0.self_attention.linear_qkv"):
        assert data["results"]["sp"]["64"][module][0] == data["results"]["mup"]["64"][module][0], module
    sp_logits, mup_logits = (data["results"][p]["64"]["decoder.layers.0.self_attention.attention_logits"][0]
                             for p in ("sp", "mup"))
    assert mup_logits == pytest.approx(sp_logits / math.sqrt(HEAD_DIM), rel=1e-5)
    # The CSV holds the same numbers as the JSON, one row per parametrization, width, module and step.
    with open(out / "coord.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected_rows = {(p, int(w), module, step): value for p, by_width in data["results"].items()
                     for w, modules in by_width.items() for module, values in modules.items()
                     for step, value in enumerate(values)}
    assert len(rows) == len(expected_rows) and {(r["parametrization"], int(r["width"]), r["module"], int(r["step"]))
                                                 for r in rows} == set(expected_rows)
    assert all(float(r["mean_abs"]) == expected_rows[(r["parametrization"], int(r["width"]), r["module"],
                                                      int(r["step"]))] for r in rows)
    assert {int(w) for w in data["results"]["mup"]} == {64, 128, 256, 512}
    assert (out / "coord.png").read_bytes()[:4] == b"\x89PNG"
