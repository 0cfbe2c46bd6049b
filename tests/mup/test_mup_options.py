"""The μP options (docs/mup.md "Options"): Adam eps scaled for every parameter, width-scaled decoupled
weight decay, zero-initialised query and readout, depth-μP's rules; and that their flags reach the real
model's init, forward and optimizer groups (tests/mup/options_worker.py, one process for all cases).
The coordinate check over depth is in test_mup_coord_check_model.py (it shares that file's launch).

References are independent of the rules: gradients measured by autograd, AdamW's decay measured on a
tensor, megatron-core's own query/key/value split, and the expected numbers written out here.
"""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from launch import REPO
from launch import subprocess_env as launch_env
from test_mup_coord_check import VOCAB, TinyGPT, make_rules

from mup import MuPConfig, MuPRules, ParamClass, init_
from mup.optimizer import mup_config_overrides, torch_param_groups


def _slope(widths, values):
    xs, ys = [math.log(w) for w in widths], [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _rules(width, **options):
    return MuPRules(MuPConfig(**{**make_rules("mup", width).cfg.__dict__, **options}))


def test_adam_eps_follows_every_gradient():
    """With scale_adam_eps, each parameter's eps shrinks with width as its gradient does: measured after 3 Adam
    steps of the small transformer at widths 64-512, every gradient (embedding, head, norms and biases too,
    not only the hidden matrices) shrinks ~1/m, and so does every eps. Scaling eps on the hidden matrices
    alone (the rule before) leaves eps/gradient growing ~m on the others."""
    widths = (64, 128, 256, 512)
    grad_rms, eps_mult = {}, {}
    for width in widths:
        rules = _rules(width, scale_adam_eps=True)
        model = TinyGPT(width, rules)
        gen = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            init_(p, name, rules, gen)
        opt = torch.optim.AdamW(torch_param_groups(model.named_parameters(), rules, lr=1e-2))
        data = torch.Generator().manual_seed(1)
        for step in range(4):
            tokens = torch.randint(0, VOCAB, (2, 17), generator=data)
            loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            if step == 3:
                for name, p in model.named_parameters():
                    grad_rms.setdefault(name, []).append(p.grad.pow(2).mean().sqrt().item())
                    eps_mult.setdefault(name, []).append(rules.adam_eps_multiplier(name))
            opt.step()
    classes = set()
    for name in grad_rms:
        grad_slope, eps_slope = _slope(widths, grad_rms[name]), _slope(widths, eps_mult[name])
        assert grad_slope < -0.6, (name, grad_slope)  # every gradient shrinks with width
        assert abs(eps_slope - grad_slope) < 0.4, (name, grad_slope, eps_slope)
        classes.add(MuPRules.param_class(name))
    assert classes == set(ParamClass)  # every class was measured


def _decay_per_step(width, scale_weight_decay, name="decoder.layers.0.mlp.linear_fc1.weight"):
    """AdamW with a zero gradient only decays: the factor one step multiplies `name` by, measured."""
    rules = _rules(width, scale_weight_decay=scale_weight_decay)
    model = TinyGPT(width, rules)
    groups = torch_param_groups(model.named_parameters(), rules, lr=1e-2, weight_decay=0.1)
    opt = torch.optim.AdamW(groups)
    params = dict(model.named_parameters())
    before = params[name].detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return (params[name].detach() / before)[before != 0].mean().item()


def test_scaled_weight_decay_is_width_independent():
    """--mup-scale-weight-decay: a hidden matrix shrinks by 1 - lr x wd per step at every width, the base
    model's lr x wd (as the `mup` package's MuAdamW: wd x m where the LR is / m). Without it, the decay per
    step falls as 1/m with the LR (Crystal's and Cerebras' convention, the default)."""
    base = 1 - 1e-2 * 0.1
    for width in (64, 256, 512):
        assert _decay_per_step(width, True) == pytest.approx(base, abs=1e-5)
        m = width / 64
        assert _decay_per_step(width, False) == pytest.approx(1 - 1e-2 * 0.1 / m, abs=1e-5)
    # Not decayed stays not decayed; the embedding's decay is the base one either way.
    rules = _rules(256, scale_weight_decay=True)
    assert rules.weight_decay_multiplier("decoder.layers.0.input_layernorm.weight") == 0.0
    assert rules.weight_decay_multiplier("decoder.layers.0.mlp.linear_fc2.bias") == 0.0
    assert rules.weight_decay_multiplier("embedding.word_embeddings.weight") == 1.0


def test_depth_mup_rules():
    """Depth-μP at 4x the base depth: branches x 1/2, everything inside the layers at LR x 1/2 (and eps x 1/2
    with scale_adam_eps), embedding, head and final norm untouched; the residual-out init counts the base
    depth (with the branch multiplier the initial model is the one without depth-μP); at the base depth
    every rule equals plain μP."""
    common = dict(hidden_size=256, base_hidden_size=64, ffn_hidden_size=1024, num_attention_heads=16, head_dim=16,
                  base_init_std=0.02)
    plain = MuPRules(MuPConfig(num_layers=8, **common))
    deep = MuPRules(MuPConfig(num_layers=8, base_num_layers=2, scale_adam_eps=True, **common))
    assert deep.residual_branch_multiplier == 0.5 and plain.residual_branch_multiplier == 1.0
    inside = ["decoder.layers.5.self_attention.linear_qkv.weight", "decoder.layers.5.mlp.linear_fc2.weight",
              "decoder.layers.0.input_layernorm.weight", "decoder.layers.7.mlp.linear_fc2.bias"]
    for name in inside:
        assert deep.lr_multiplier(name) == pytest.approx(plain.lr_multiplier(name) * 0.5), name
        assert deep.adam_eps_multiplier(name) == pytest.approx(0.5 / 4), name
    for name in ("embedding.word_embeddings.weight", "output_layer.weight", "decoder.final_layernorm.weight"):
        assert deep.lr_multiplier(name) == plain.lr_multiplier(name) == 1.0, name
        assert deep.adam_eps_multiplier(name) == pytest.approx(1 / 4), name
    fc2 = "decoder.layers.3.mlp.linear_fc2.weight"
    assert deep.init_std(fc2) == pytest.approx(0.02 / math.sqrt(2 * 4 * 2))
    assert deep.init_std(fc2) * deep.residual_branch_multiplier == pytest.approx(plain.init_std(fc2))
    with pytest.raises(ValueError, match="parameter name"):
        deep.lr_multiplier(ParamClass.NORM)  # a layer's norm or the final one: only the name tells
    at_base = MuPRules(MuPConfig(num_layers=8, base_num_layers=8, **common))
    for name in inside + ["embedding.word_embeddings.weight", fc2]:
        assert at_base.lr_multiplier(name) == plain.lr_multiplier(name)
        assert at_base.init_std(name) == plain.init_std(name)
    assert at_base.residual_branch_multiplier == 1.0


def test_zero_init_rules_and_overrides_cover_every_signature():
    """Zero readout: the untied head starts at 0 (the embedding does not). Every distinct (lr, eps, wd)
    signature a depth-μP model's parameters have gets its megatron override (a signature missing from the
    probed ones would fall into the default group silently)."""
    rules = _rules(256, zero_init_readout=True, zero_init_query=True)
    head = init_(torch.empty(VOCAB, 256), "output_layer.weight", rules, torch.Generator().manual_seed(0))
    assert head.abs().max().item() == 0.0
    emb = init_(torch.empty(VOCAB, 256), "embedding.word_embeddings.weight", rules, torch.Generator().manual_seed(0))
    assert emb.std().item() > 0.01
    from megatron.core.optimizer import OptimizerConfig

    deep = MuPRules(MuPConfig(**{**_rules(256).cfg.__dict__, "num_layers": 4, "base_num_layers": 1,
                                 "scale_weight_decay": True, "scale_adam_eps": True}))
    config = OptimizerConfig(optimizer="adam", lr=1e-2, min_lr=1e-3, weight_decay=0.1, adam_eps=1e-8)
    overrides = mup_config_overrides(deep, config)
    model = TinyGPT(256, deep)
    for name, p in model.named_parameters():
        matched = [o for key, o in overrides.items() if key.matches(p, name)]
        assert len(matched) == 1, name
        assert matched[0].get("max_lr", 1e-2) == pytest.approx(1e-2 * deep.lr_multiplier(name)), name
        assert matched[0].get("wd_mult", 1.0) == pytest.approx(deep.weight_decay_multiplier(name)), name
        assert matched[0]["eps"] == pytest.approx(1e-8 * deep.adam_eps_multiplier(name)), name


# ---- the flags in the real model -------------------------------------------------------------------------

HIDDEN, BASE, LAYERS, BASE_LAYERS, HEADS, GROUPS, LR, WD, EPS = 128, 32, 4, 1, 8, 2, 0.01, 0.1, 1e-8
MODEL = ["--model-preset", "tiny-gqa", "--device", "cpu", "--mock-data", "--num-layers", LAYERS,
         "--hidden-size", HIDDEN, "--ffn-hidden-size", 352, "--num-attention-heads", HEADS, "--kv-channels", 16,
         "--num-query-groups", GROUPS, "--seq-length", 16, "--max-position-embeddings", 16, "--vocab-size", 512,
         "--micro-batch-size", 1, "--global-batch-size", 1, "--train-iters", 2, "--lr", LR,
         "--lr-decay-style", "constant", "--weight-decay", WD, "--adam-eps", EPS, "--use-mup",
         "--mup-base-hidden-size", BASE, "--untie-embeddings-and-output-weights"]
OPTIONS = ["--mup-base-num-layers", BASE_LAYERS, "--mup-scale-weight-decay", "--mup-scale-adam-eps",
           "--mup-zero-init-query", "--mup-zero-init-readout"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("options") / "report.json"
    cases = {"plain": MODEL, "options": MODEL + OPTIONS}
    proc = subprocess.run([sys.executable, str(REPO / "tests/mup/options_worker.py"), str(out), json.dumps(cases)],
                          cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_zero_init_flags_reach_the_model(built):
    """GQA (8 query heads, 2 key/value groups): megatron-core's own split of linear_qkv's output gives a zero
    query and non-zero keys and values, so exactly the query rows were zeroed; the untied head is zero."""
    options, plain = built["options"], built["plain"]
    assert options["query"] == 0.0 and plain["query"] > 0.01
    assert options["key"] == pytest.approx(plain["key"]) and options["value"] == pytest.approx(plain["value"])
    assert options["output_layer"] == 0.0 and plain["output_layer"] > 0.005
    assert options["embedding"] == pytest.approx(plain["embedding"])


def test_depth_and_optimizer_flags_reach_the_model(built):
    """--mup-base-num-layers 1 at 4 layers: the layers' projections multiply their output by 1/2 in the forward;
    the optimizer groups megatron built have the LR, decay and eps written out here (m = 4, depth factor 1/2)."""
    options, plain = built["options"], built["plain"]
    assert options["residual_branch_multiplier"] == 0.5 and plain["residual_branch_multiplier"] == 1.0
    assert options["proj_out_over_plain"] == pytest.approx(0.5, rel=1e-6)
    assert plain["proj_out_over_plain"] == pytest.approx(1.0, rel=1e-6)
    m, depth = HIDDEN / BASE, math.sqrt(BASE_LAYERS / LAYERS)
    expected = {  # name: (lr, weight decay, eps) with the options; plain: (lr, wd, eps) without
        "decoder.layers.2.self_attention.linear_qkv.weight": ((LR / m * depth, WD * m / depth, EPS / m * depth),
                                                              (LR / m, WD, EPS)),
        "decoder.layers.3.mlp.linear_fc2.weight": ((LR / m * depth, WD * m / depth, EPS / m * depth), (LR / m, WD, EPS)),
        "decoder.layers.0.input_layernorm.weight": ((LR * depth, 0.0, EPS / m * depth), (LR, 0.0, EPS)),
        "decoder.final_layernorm.weight": ((LR, 0.0, EPS / m), (LR, 0.0, EPS)),
        "embedding.word_embeddings.weight": ((LR, WD, EPS / m), (LR, WD, EPS)),
        "output_layer.weight": ((LR, WD, EPS / m), (LR, WD, EPS)),
    }
    for name, (with_options, without) in expected.items():
        for case, values in (("options", with_options), ("plain", without)):
            group = built[case]["groups"][name]
            assert (group["lr"], group["weight_decay"], group["eps"]) == pytest.approx(values, rel=1e-9), (case, name)
    # lr x wd of every decayed matrix is the base one with --mup-scale-weight-decay
    for name, group in options["groups"].items():
        if group["weight_decay"]:
            assert group["lr"] * group["weight_decay"] == pytest.approx(LR * WD, rel=1e-9), name


def test_zero_readout_with_tied_embeddings_is_refused():
    from megatron_ext.arguments import parse_args

    with pytest.raises(SystemExit, match="untie-embeddings-and-output-weights"):
        parse_args(["--model-preset", "tiny", "--mock-data", "--device", "cpu", "--use-mup", "--mup-base-hidden-size",
                    "32", "--tie-embeddings-and-output-weights", "--mup-zero-init-readout"], world_size=1)
