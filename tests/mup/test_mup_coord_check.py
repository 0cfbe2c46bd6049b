"""Coordinate check library on a tiny pure-torch pre-LN transformer built with the mup rules.

Its modules carry megatron-core GPTModel names so mup.classify / the rules apply unchanged.
Expected: after a few Adam steps, activation size is ~flat in width under μP and grows under SP
(fixed init std, one LR). Measured on this setup over 5 seeds: SP slope 0.97-1.20, μP slope
-0.13..-0.02 (slightly negative: at small widths the init part of the activations, which μP
makes shrink or stay put, has not yet been swamped by the width-independent updates), and μP
without the 1/m hidden LR 0.64-0.87.
"""

import csv
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mup import MuPConfig, MuPRules, StandardRules, init_
from mup.coord_check import growing_modules, growth_slope, module_slopes, record_coords, write_outputs
from mup.optimizer import torch_param_groups

WIDTHS = (64, 128, 256, 512, 1024)
BASE_WIDTH, LAYERS, VOCAB, HEAD_DIM = 64, 1, 256, 16
STEPS, LR, SIGMA = 5, 1e-2, 0.02


class ScaledEmbedding(nn.Embedding):
    """Embedding whose output already includes the μP multiplier, so hooks see the real input."""

    def __init__(self, vocab, width, scale):
        super().__init__(vocab, width)
        self.scale = scale

    def forward(self, ids):
        return super().forward(ids) * self.scale


class ScaledLinear(nn.Linear):
    def __init__(self, fan_in, fan_out, scale):
        super().__init__(fan_in, fan_out, bias=False)
        self.scale = scale

    def forward(self, x):
        return super().forward(x) * self.scale


class Attention(nn.Module):
    def __init__(self, width, softmax_scale):
        super().__init__()
        self.heads, self.softmax_scale = width // HEAD_DIM, softmax_scale
        self.linear_qkv = nn.Linear(width, 3 * width)
        self.linear_proj = nn.Linear(width, width)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (z.transpose(1, 2) for z in
                   self.linear_qkv(x).view(b, t, 3, self.heads, HEAD_DIM).unbind(2))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
        return self.linear_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.linear_fc1 = nn.Linear(width, 4 * width)
        self.linear_fc2 = nn.Linear(4 * width, width)

    def forward(self, x):
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class Layer(nn.Module):
    def __init__(self, width, softmax_scale):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(width)
        self.self_attention = Attention(width, softmax_scale)
        self.pre_mlp_layernorm = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x):
        x = x + self.self_attention(self.input_layernorm(x))
        return x + self.mlp(self.pre_mlp_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, width, softmax_scale):
        super().__init__()
        self.layers = nn.ModuleList(Layer(width, softmax_scale) for _ in range(LAYERS))
        self.final_layernorm = nn.LayerNorm(width)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.final_layernorm(x)


class TinyGPT(nn.Module):
    def __init__(self, width, rules):
        super().__init__()
        self.embedding = nn.Module()
        self.embedding.word_embeddings = ScaledEmbedding(VOCAB, width, rules.embedding_multiplier)
        self.decoder = Decoder(width, rules.softmax_scale(HEAD_DIM))
        self.output_layer = ScaledLinear(width, VOCAB, rules.output_multiplier)

    def forward(self, ids):
        return self.output_layer(self.decoder(self.embedding.word_embeddings(ids)))


def make_rules(param, width):
    if param == "sp":
        return StandardRules(init_std=SIGMA, num_layers=LAYERS)
    return MuPRules(MuPConfig(hidden_size=width, base_hidden_size=BASE_WIDTH, num_layers=LAYERS,
                              ffn_hidden_size=4 * width, num_attention_heads=width // HEAD_DIM,
                              head_dim=HEAD_DIM, base_init_std=SIGMA))


def run_sweep(params=("sp", "mup"), rules_fn=make_rules, widths=WIDTHS, seed=0):
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = [torch.randint(0, VOCAB, (2, 17), generator=gen) for _ in range(STEPS)]
    batches = [(t[:, :-1], t[:, 1:]) for t in tokens]
    results = {}
    for param in params:
        for width in widths:
            rules = rules_fn(param, width)
            model = TinyGPT(width, rules)
            init_gen = torch.Generator().manual_seed(seed)
            for name, p in model.named_parameters():
                init_(p, name, rules, init_gen)
            opt = torch.optim.AdamW(torch_param_groups(model.named_parameters(), rules, lr=LR))

            def train_step(model, batch, opt=opt):
                ids, targets = batch
                loss = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
                opt.zero_grad()
                loss.backward()
                opt.step()
                return loss.item()

            results.setdefault(param, {})[width] = record_coords(
                model, batches, train_step, STEPS,
                module_filter=lambda n, m: isinstance(m, (nn.Linear, nn.Embedding)))
    return results


@pytest.fixture(scope="module")
def sweep():
    return run_sweep()


def test_mup_flat_sp_grows(sweep):
    slopes = growth_slope(sweep)
    assert abs(slopes["mup"]) < 0.3, slopes
    assert slopes["sp"] > 0.6, slopes
    per_module = module_slopes(sweep)
    # the logits specifically: flat-ish under μP (output multiplier), growing under SP
    assert abs(per_module["mup"]["output_layer"]) < 0.35, per_module["mup"]
    assert per_module["sp"]["output_layer"] > 0.6, per_module["sp"]


def test_record_coords_shape(sweep):
    coords = sweep["mup"][64]
    assert len(coords) == 2 + 4 * LAYERS  # embedding, output, qkv/proj/fc1/fc2 per layer
    assert all(len(v) == STEPS and all(x > 0 for x in v) for v in coords.values())


def test_detects_missing_hidden_lr_scaling():
    """A μP model trained without the 1/m hidden LR must fail the check."""

    class NoLrScaling(MuPRules):
        def lr_multiplier(self, name_or_class):
            return 1.0

    results = run_sweep(("broken",), lambda p, w: NoLrScaling(make_rules("mup", w).cfg),
                        widths=WIDTHS[:-1])  # the widest model is the slow one; 4 widths suffice
    assert growth_slope(results)["broken"] > 0.4


def test_write_outputs(sweep, tmp_path):
    paths = write_outputs(sweep, str(tmp_path), max_panels=3)
    with open(paths["json"]) as f:
        data = json.load(f)
    assert set(data["results"]) == {"sp", "mup"}
    assert data["growth_slope_last_step"] == pytest.approx(growth_slope(sweep))
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(WIDTHS) * (2 + 4 * LAYERS) * STEPS
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_record_coords_rejects_bad_arguments():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError):
        record_coords(model, [], lambda m, b: None, 1)
    with pytest.raises(ValueError):
        record_coords(model, [0], lambda m, b: None, 0)
    with pytest.raises(ValueError):
        record_coords(model, [0], lambda m, b: None, 1, module_filter=lambda n, m: False)
    # hooks are removed even when the step fails
    with pytest.raises(RuntimeError):
        record_coords(model, [0], lambda m, b: (_ for _ in ()).throw(RuntimeError()), 1)
    assert not model[0]._forward_hooks


def test_growing_modules_names_the_module_that_grows():
    """The verdict is per module: one growing module among flat ones is named, although the mean slope over
    all modules stays small; shrinking (init part of a μP activation) is not a failure."""
    widths = (64, 128, 256, 512)
    results = {"run": {w: {"flat": [1.0] * 4,
                           "grows_late": [1.0, 1.0, (w / 64) ** 0.5, (w / 64) ** 0.5],
                           "shrinks": [(64 / w) ** 0.5] * 4,
                           **{f"other{i}": [1.0] * 4 for i in range(8)}} for w in widths}}
    assert growth_slope(results)["run"] < 0.1
    assert growing_modules(results) == {"run": {"grows_late": pytest.approx(0.5)}}
    # The default window is the second half of the steps; one over all four steps takes in the flat start.
    assert 0.1 < module_slopes(results, window=4)["run"]["grows_late"] < 0.4
    assert module_slopes(results, step=1)["run"]["grows_late"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="window"):
        module_slopes(results, window=5)


def test_record_coords_activation_picks_the_tensor():
    """`activation` chooses what is measured from a module's output (here: twice the output)."""
    model = nn.Sequential(nn.Linear(3, 3))
    batch = torch.ones(2, 3)
    plain = record_coords(model, [batch], lambda m, b: m(b), 2)
    doubled = record_coords(model, [batch], lambda m, b: m(b), 2, activation=lambda name, out: 2 * out)
    assert doubled["0"] == pytest.approx([2 * v for v in plain["0"]])
    skipped = record_coords(model, [batch], lambda m, b: m(b), 1, activation=lambda name, out: None)
    assert skipped == {}
