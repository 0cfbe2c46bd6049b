"""The open_lm reference checked against itself and against torch's own primitives, so that the Megatron
DCLM tests compare against something that is right. Fast: no process starts, tiny models on CPU."""

import json

import pytest
import torch
import torch.nn.functional as F

import openlm_reference as ref


@pytest.fixture
def tiny(tmp_path):
    ref.write_tiny_openlm(tmp_path, seed=3)
    tensors, config = ref.read_openlm(tmp_path)
    tokens = torch.randint(0, config["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    return tensors, config, tokens


def test_forward_is_causal(tiny):
    tensors, config, tokens = tiny
    logits = ref.openlm_forward(tensors, config, tokens)
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % config["vocab_size"]
    other = ref.openlm_forward(tensors, config, changed)
    assert torch.equal(logits[:, :10], other[:, :10])
    assert (logits[:, 10:] - other[:, 10:]).abs().amax(-1).min() > 1e-6  # every later position sees it


def test_qk_norm_is_over_the_full_width_not_per_head(tiny, monkeypatch):
    tensors, config, tokens = tiny
    x = torch.randn(3, 64, dtype=torch.float64) * torch.linspace(0.1, 5, 64, dtype=torch.float64)
    y = ref.qk_norm(x, torch.ones(64, dtype=torch.float64), None, 1e-5, n_heads=4)
    assert torch.allclose(y.mean(-1), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert y.view(3, 4, 16).mean(-1).abs().max() > 0.1  # not normalised per head

    def per_head(x, gain, bias, eps, n_heads):  # megatron-core's qk_layernorm shape of the computation
        rows = x.unflatten(-1, (n_heads, -1))
        return ref.layer_norm(rows, gain.view(n_heads, -1), None, eps).flatten(-2)

    full = ref.openlm_forward(tensors, config, tokens)
    monkeypatch.setattr(ref, "qk_norm", per_head)
    assert (ref.openlm_forward(tensors, config, tokens) - full).abs().max() > 1e-3


def test_float32_agrees_with_float64(tiny):
    tensors, config, tokens = tiny
    f64 = ref.openlm_forward(tensors, config, tokens, dtype=torch.float64)
    f32 = ref.openlm_forward(tensors, config, tokens, dtype=torch.float32)
    assert f32.dtype == torch.float32 and f64.abs().max() > 0.5
    assert ((f32.double() - f64).abs().max() / f64.abs().max()).item() < 1e-5


def test_building_blocks_match_torch_primitives():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 48, generator=g, dtype=torch.float64)
    gain, bias = torch.randn(48, generator=g, dtype=torch.float64), torch.randn(48, generator=g, dtype=torch.float64)
    assert torch.allclose(ref.layer_norm(x, gain, None, 1e-5), F.layer_norm(x, (48,), gain, None, 1e-5))
    assert torch.allclose(ref.layer_norm(x, gain, bias, 1e-5), F.layer_norm(x, (48,), gain, bias, 1e-5))
    q, k, v = (torch.randn(2, 7, 3, 16, generator=g, dtype=torch.float64) for _ in range(3))
    sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    assert torch.allclose(ref.causal_attention(q, k, v), sdpa.transpose(1, 2))
    # rotary as complex multiplication, pairing dimension i with i + d/2 (half-split, rotary.py:10-12)
    pos = torch.arange(7, dtype=torch.float64)[None, :, None, None]
    freq = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    z = torch.complex(q[..., :8], q[..., 8:]) * torch.polar(torch.ones_like(pos * freq), pos * freq)
    assert torch.allclose(ref.rotary(q), torch.cat((z.real, z.imag), -1))


def test_rotary_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 32, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, 32, generator=g, dtype=torch.float64)
    rq, rk = ref.rotary(q.expand(1, 12, 1, 32)), ref.rotary(k.expand(1, 12, 1, 32))
    scores = (rq[0, :, 0, None, :] * rk[0, None, :, 0, :]).sum(-1)  # [query position, key position]
    assert torch.allclose(scores[5, 2], scores[9, 6]) and torch.allclose(scores[3, 3], scores[11, 11])
    assert not torch.allclose(scores[5, 2], scores[5, 3])


def test_ffn_hidden_size():
    assert ref.ffn_hidden_size(2048) == 5632 and ref.ffn_hidden_size(64) == 256
    # the 256 * ceil(8 * dim / 3 / 256) agrees with open_lm's int()-first form for every integer dim
    assert all(ref.ffn_hidden_size(d) == 256 * -(-8 * d // (3 * 256)) for d in range(1, 9000))


def test_config_is_dclm_1b_shaped():
    config = ref.published_config()
    p = ref.openlm_params(config)
    assert (p["dim"], p["n_layers"], p["n_heads"], p["vocab_size"], p["norm_eps"]) == (2048, 24, 16, 50432, 1e-5)
    assert p["qk_norm"] and not p["weight_tying"] and p["norm_type"] == "gain_only_lp_layer_norm"
    shapes = ref.expected_shapes(config, inv_freq=False)
    n = sum(torch.Size(s).numel() for name, s in shapes.items() if not name.endswith(("q_norm.weight", "k_norm.weight")))
    # DCLM's own count for this shape (mlfoundations/dclm training/configs/1b_1x_fast.json), which leaves out the
    # query/key norm gains; with them, 24 layers x 2 x 2048 more
    assert n == 1439795200
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 1439795200 + 24 * 2 * 2048


@pytest.mark.parametrize("shards,dtype", [(1, torch.float32), (3, torch.bfloat16)])
def test_write_tiny_openlm_round_trips(tmp_path, shards, dtype):
    written = ref.write_tiny_openlm(tmp_path, dim=32, n_layers=3, n_heads=2, vocab_size=50, shards=shards, dtype=dtype)
    tensors, config = ref.read_openlm(tmp_path)
    assert list(config) == list(ref.published_config())  # the published keys, in the published order
    assert config["model_type"] == "openlm" and config["torch_dtype"] == str(dtype)[6:]
    shapes = ref.expected_shapes(config)
    assert {n: tuple(t.shape) for n, t in tensors.items()} == shapes
    assert all(torch.equal(tensors[n], written[n]) and tensors[n].dtype == dtype for n in shapes)
    gains = [t for n, t in tensors.items() if n.endswith("norm.weight")]
    assert len(gains) == 3 * 4 + 1 and all((g.float() - 1).abs().max() > 0.1 for g in gains)
    if shards > 1:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(shapes) and len(set(index["weight_map"].values())) == shards
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    else:
        assert not (tmp_path / "model.safetensors.index.json").exists()


def test_nested_params_args_dict_config_reads_the_same(tiny):
    tensors, config, tokens = tiny
    nested = {k: config[k] for k in ("architectures", "model_type", "params", "torch_dtype", "transformers_version")}
    args = {k: v for k, v in config.items() if k not in nested and k != "norm_type"}
    nested["params_args_dict"] = {**args, "model_norm": config["norm_type"]}  # the first DCLM upload's shape
    assert torch.equal(ref.openlm_forward(tensors, nested, tokens), ref.openlm_forward(tensors, config, tokens))
    with pytest.raises(KeyError):  # a full LayerNorm (open_lm's default norm_type) needs bias tensors
        ref.openlm_forward(tensors, {k: v for k, v in config.items() if k != "norm_type"}, tokens)
