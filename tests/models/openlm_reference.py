"""An independent reference for open_lm's Transformer (DCLM-1B, DCLM-1B-IT) and its Hugging Face layout.

Written from the math in mlfoundations/open_lm at commit OPENLM_COMMIT, not copied from it: the tests compare
the Megatron model against `openlm_forward`, so this file must not share code or shortcuts with
megatron_ext. Every fact it relies on is in OPENLM_FACTS with file:line at that commit ("model.py" means
open_lm/model.py). Plain torch, any float dtype; float64 is the default so it can serve as ground truth.
Checked once by hand against open_lm's own Transformer at that commit (xformers stubbed, attn torch_attn,
gain_only_lp_layer_norm, qk norm, swiglu_torch; tensors from write_tiny_openlm loaded with strict=True):
1.9e-15 relative in float64 before open_lm's float32 cast of the logits, 1.1e-6 in float32; and open_lm's HF
class (open_lm/hf, from_pretrained) loads write_tiny_openlm's directories, single and sharded, with no missing
or unexpected keys, gain-only LPLayerNorm eps 1e-5, logits within 8.5e-7 of openlm_forward in float32."""

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

OPENLM_COMMIT = "9bb92ef1689333534b7057942a20d18a46d1fa52"

OPENLM_FACTS = {
    "block": "pre-norm: h = x + attn(attention_norm(x)); out = h + ffn(ffn_norm(h)); final norm then output "
             "(model.py:311-325, 412-413); logits cast to float32 (model.py:415)",
    "norms": "attention_norm, ffn_norm, norm are norm_type(dim, eps=norm_eps) (model.py:283-290, 360-363); DCLM's "
             "norm_type 'gain_only_lp_layer_norm' = LayerNorm with a gain and no bias tensor "
             "(norms.py:141-142, 41-44), gain initialised to 1 (norms.py:48-51), F.layer_norm i.e. mean-subtracted, "
             "biased variance (norms.py:57-58, 79-86: LP only downcasts under autocast); eps = Params.norm_eps, "
             "default 1e-5 (model.py:85), config 'norm_eps': 1e-05",
    "qk_norm": "q_norm/k_norm are the same norm_type over n_heads*head_dim with eps=norm_eps (model.py:129-144), "
               "applied to the whole q and k projections (model.py:162-163) BEFORE the head split "
               "(model.py:165-167); the gain is n_heads*head_dim wide; enabled by Params.apply_qk_norm",
    "in_proj": "in_proj = Linear(dim, 3*n_heads*head_dim, bias=False) (model.py:122), split by chunk(3) into "
               "q, k, v in that order (model.py:160); out_proj = Linear(n_heads*head_dim, dim, bias=False) "
               "(model.py:123); head_dim = dim // n_heads (model.py:121); no GQA",
    "swiglu": "ffn_type 'swiglu_torch': w12 = Linear(dim, 2*hidden) and w3 = Linear(hidden, dim), bias=False "
              "(model.py:230-231, 255); gate, x = w12(x).chunk(2): FIRST half is the gate, out = w3(silu(gate)*x) "
              "(model.py:234-236); hidden = 256*((int(8*dim/3)+255)//256) (model.py:254) = 5632 for dim 2048",
    "rotary": "'rotary' = RotaryWithCast(head_dim, seq_len) (model.py:105-106): inv_freq = 1/10000^(arange(0,d,2)/d) "
              "(rotary.py:60), angles for cat(freqs, freqs) (rotary.py:75), x*cos + rotate_half(x)*sin with "
              "rotate_half = cat(-x2, x1) of the two halves (rotary.py:10-12, 26): half-split, not interleaved, "
              "whole head dim, base 10000 fixed, no scaling; applied after qk norm and head split (model.py:170); "
              "inv_freq is a float32 persistent buffer (rotary.py:51, 60) that a checkpoint load overwrites, and "
              "cos/sin are computed from it in float32 then cast to k's dtype (rotary.py:73-78)",
    "attention": "causal (model.py:314); torch_attn = F.scaled_dot_product_attention(is_causal=True), default "
                 "scale 1/sqrt(head_dim) (attention.py:127-134); xformers_attn with LowerTriangularMask "
                 "(attention.py:77-78, 88); attn_name 'auto' picks xformers on CUDA (attention.py:198-199)",
    "names": "Transformer: tok_embeddings, layers.N.{attention.in_proj, attention.out_proj, attention.q_norm, "
             "attention.k_norm, feed_forward.w12, feed_forward.w3, attention_norm, ffn_norm}.weight, norm.weight, "
             "output.weight (model.py:348-364, 246-255, 283-290); buffer layers.N.attention.pos_embed.inv_freq is "
             "persistent (rotary.py:51) so state_dict carries it; both HF wrappers hold the Transformer as "
             "self.model (hf/modeling_openlm.py:49, 58; utils/transformers/hf_model.py:26): prefix 'model.'",
    "tying": "weight_tying default False (model.py:88); if True tok_embeddings.weight = output.weight "
             "(model.py:365-366); DCLM-1B 'weight_tying': false; no bias anywhere (model.py:122-123, 255, 364)",
    "init": "trunc_normal_ with a=-3*std, b=3*std everywhere: in_proj std 1/sqrt(dim) (model.py:152-153); out_proj "
            "1/sqrt(dim)/sqrt(2*(layer_id+1)) (model.py:155-156); w12 1/sqrt(dim) (model.py:297-298); w3 "
            "1/sqrt(hidden)/sqrt(2*(layer_id+1)) (model.py:300-302); output and tok_embeddings 1/sqrt(dim) "
            "(model.py:374-376); layer_id counts from 0 (model.py:352-357); norm gains 1 (norms.py:48-51)",
    "hf_config": "open_lm/hf/modeling_openlm.py:28-38 reads every Params field present in config.json as a top-level "
                 "key (dim, n_layers, n_heads, vocab_size, norm_eps, seq_len, post_embed_norm, weight_tying, "
                 "apply_qk_norm, positional_embedding_type, ffn_type, moe_*), norm_type via get_norm_class and "
                 "attn_name via get_attn_func; model_type 'openlm' (hf/configuration_openlm.py:16), which forces "
                 "architectures ['OpenLMForCausalLM'] (configuration_openlm.py:19). The older loader "
                 "(utils/transformers/hf_model.py:18-21, model.py:450-472) reads a nested 'params_args_dict' with "
                 "'model_norm' and 'qk_norm' instead",
}

PREFIX = "model."  # OPENLM_FACTS["names"]
LAYER_TENSORS = ("attention.in_proj.weight", "attention.out_proj.weight", "attention.q_norm.weight",
                 "attention.k_norm.weight", "feed_forward.w12.weight", "feed_forward.w3.weight",
                 "attention_norm.weight", "ffn_norm.weight")
GAIN_ONLY = ("gain_only_lp_layer_norm", "gain_only_layer_norm")


def ffn_hidden_size(dim: int) -> int:
    return 256 * ((int(2 * 4 * dim / 3) + 256 - 1) // 256)  # model.py:254, int() first as there


def openlm_params(config: dict) -> dict:
    """The model parameters from either published config.json shape: flat (DCLM-1B and -IT today) or the
    first upload's nested 'params_args_dict' with 'model_norm'/'qk_norm'."""
    c = {**config, **(config.get("params_args_dict") or {})}
    p = dict(dim=c["dim"], n_layers=c["n_layers"], n_heads=c["n_heads"], vocab_size=c["vocab_size"],
             norm_eps=c.get("norm_eps", 1e-5), weight_tying=c.get("weight_tying", False),
             post_embed_norm=c.get("post_embed_norm", False),
             qk_norm=c.get("apply_qk_norm", c.get("qk_norm", False)),
             norm_type=c.get("norm_type", c.get("model_norm", "default_layer_norm")),  # default: nn.LayerNorm
             ffn_type=c.get("ffn_type", "swiglu"), pos=c.get("positional_embedding_type", "rotary"))
    if p["ffn_type"] not in ("swiglu", "swiglu_torch"):  # xformers' SwiGLU has the same w12/w3 math and names
        raise NotImplementedError(f"ffn_type {p['ffn_type']}")
    if p["pos"] != "rotary":
        raise NotImplementedError(f"positional_embedding_type {p['pos']}")
    if p["norm_type"] not in GAIN_ONLY + ("default_layer_norm", "lp_layer_norm"):
        raise NotImplementedError(f"norm_type {p['norm_type']}")
    return p


def layer_norm(x, gain, bias, eps):
    """LayerNorm over the last dim, biased variance, as F.layer_norm (norms.py:58); bias is None when gain-only."""
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * gain
    return y if bias is None else y + bias


def qk_norm(x, gain, bias, eps, n_heads):
    """open_lm normalises the full n_heads*head_dim row (model.py:162); n_heads is unused on purpose, so a test
    can swap in a per-head variant with the same signature and see the logits move."""
    return layer_norm(x, gain, bias, eps)


def rotary(x, base=10000.0):
    """x: [batch, seq, heads, head_dim]. Pairs dimension i with i + head_dim/2 (rotate_half, rotary.py:10-12)
    and rotates the pair by position * base^(-2i/head_dim) (rotary.py:60, 75). open_lm's inv_freq is a
    float32 tensor (rotary.py:60), so it is rounded the same way here; the rest is taken in float64."""
    seq, d = x.shape[1], x.shape[-1]
    inv_freq = (1.0 / (base ** (torch.arange(0, d, 2).float() / d))).double()
    angle = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [seq, d/2]
    cos, sin = (f(angle)[None, :, None, :].to(x.dtype) for f in (torch.cos, torch.sin))
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def causal_attention(q, k, v):
    """[batch, seq, heads, head_dim] each; softmax(q k^T / sqrt(head_dim)) with a causal mask."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    seq = q.shape[1]
    future = torch.ones(seq, seq, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


def openlm_forward(tensors: dict, config: dict, tokens: torch.LongTensor, dtype=torch.float64) -> torch.Tensor:
    """Logits [batch, seq, vocab] (in `dtype`) of open_lm's Transformer, from tensors under their HF names."""
    p = openlm_params(config)
    t = {k: v.to(dtype) for k, v in tensors.items() if not k.endswith("inv_freq")}  # buffer: recomputed
    n_heads, eps = p["n_heads"], p["norm_eps"]
    gain_only = p["norm_type"] in GAIN_ONLY

    def norm(name, x, fn=layer_norm, *extra):
        return fn(x, t[name + ".weight"], None if gain_only else t[name + ".bias"], eps, *extra)

    tokens = tokens if tokens.dim() == 2 else tokens[None]
    x = t[PREFIX + "tok_embeddings.weight"][tokens]
    if p["post_embed_norm"]:
        x = norm(PREFIX + "post_embed_norm", x)
    b, s, dim = x.shape
    for i in range(p["n_layers"]):
        L = f"{PREFIX}layers.{i}."
        q, k, v = (norm(L + "attention_norm", x) @ t[L + "attention.in_proj.weight"].T).chunk(3, dim=-1)
        if p["qk_norm"]:
            q = norm(L + "attention.q_norm", q, qk_norm, n_heads)
            k = norm(L + "attention.k_norm", k, qk_norm, n_heads)
        q, k, v = (y.reshape(b, s, n_heads, dim // n_heads) for y in (q, k, v))
        attn = causal_attention(rotary(q), rotary(k), v).reshape(b, s, dim)
        x = x + attn @ t[L + "attention.out_proj.weight"].T
        gate, up = (norm(L + "ffn_norm", x) @ t[L + "feed_forward.w12.weight"].T).chunk(2, dim=-1)
        x = x + (torch.nn.functional.silu(gate) * up) @ t[L + "feed_forward.w3.weight"].T
    x = norm(PREFIX + "norm", x)
    out = t.get(PREFIX + "output.weight", t[PREFIX + "tok_embeddings.weight"] if p["weight_tying"] else None)
    return x @ out.T


def published_config(dim=2048, n_layers=24, n_heads=16, vocab_size=50432, seq_len=2048, dtype=torch.float32,
                     model="open_lm_1b_swiglutorch") -> dict:
    """config.json as TRI-ML/DCLM-1B publishes it: flat keys since its PR #1 (the first upload nested them under
    'params_args_dict' with 'model_norm'), attn_name 'torch_attn' since commit 72a82fb, 'params': null and
    architectures as uploaded, keys in this order; the defaults are DCLM-1B's values."""
    return {"architectures": ["OpenLMModel"], "model_type": "openlm", "params": None,
            "apply_qk_norm": True, "attn_activation": None, "attn_name": "torch_attn", "attn_seq_scalar": None,
            "attn_seq_scalar_alpha": None, "dim": dim, "ffn_type": "swiglu_torch", "model": model,
            "norm_type": "gain_only_lp_layer_norm", "moe_capacity_factor": 1.25,
            "moe_expert_model_parallelism": False, "moe_freq": 0, "moe_loss_weight": 0.1, "moe_num_experts": None,
            "moe_top_k": 2, "moe_weight_parallelism": False, "n_heads": n_heads, "n_layers": n_layers,
            "norm_eps": 1e-05, "positional_embedding_type": "rotary", "post_embed_norm": False, "qk_norm": True,
            "seq_len": seq_len, "vocab_size": vocab_size, "weight_tying": False,
            "torch_dtype": str(dtype).removeprefix("torch."), "transformers_version": "4.40.2"}


def expected_shapes(config: dict, inv_freq=True) -> dict:
    """Every tensor name the HF layout holds, with its shape, as the config implies."""
    p = openlm_params(config)
    dim, hd, hidden = p["dim"], p["dim"] // p["n_heads"], ffn_hidden_size(p["dim"])
    per_layer = dict(zip(LAYER_TENSORS, [(3 * dim, dim), (dim, dim), (dim,), (dim,), (2 * hidden, dim),
                                         (dim, hidden), (dim,), (dim,)]))
    shapes = {PREFIX + "tok_embeddings.weight": (p["vocab_size"], dim)}
    for i in range(p["n_layers"]):
        shapes.update({f"{PREFIX}layers.{i}.{n}": s for n, s in per_layer.items()})
        if inv_freq:  # the persistent rotary buffer (rotary.py:51)
            shapes[f"{PREFIX}layers.{i}.attention.pos_embed.inv_freq"] = (hd // 2,)
    shapes.update({PREFIX + "norm.weight": (dim,), PREFIX + "output.weight": (p["vocab_size"], dim)})
    return shapes


def write_tiny_openlm(directory, *, dim=64, n_layers=2, n_heads=4, vocab_size=200, seq_len=64, seed=0,
                      dtype=torch.float32, shards=1, inv_freq=True) -> dict:
    """A random tiny DCLM-architecture model in open_lm's HF layout; returns the tensors written.
    Weights use open_lm's init scales (OPENLM_FACTS["init"]), norm gains are 1 + 0.3*N(0,1), so a converter
    that drops or misplaces a gain shows. shards > 1 writes model-0000i-of-0000n.safetensors plus
    model.safetensors.index.json as the DCLM repos do; shards == 1 writes model.safetensors."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = published_config(dim, n_layers, n_heads, vocab_size, seq_len, dtype, model="open_lm_tiny_swiglutorch")
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in expected_shapes(config, inv_freq).items():
        if name.endswith("inv_freq"):
            hd = dim // n_heads
            value = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        elif len(shape) == 1:
            value = 1.0 + 0.3 * torch.randn(shape, generator=gen)
        else:
            std = 1.0 / math.sqrt(shape[1] if "w3" in name or "out_proj" in name else dim)
            value = torch.randn(shape, generator=gen).clamp(-3, 3) * std
        tensors[name] = value.to(dtype).contiguous()
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return tensors
    names, weight_map = list(tensors), {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s * len(names) // shards:(s + 1) * len(names) // shards]}
        save_file(part, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return tensors


def read_openlm(directory) -> tuple[dict, dict]:
    """(tensors, config) from an open_lm-layout HF directory, single-file or sharded."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    tensors = {}
    for f in files:
        tensors.update(load_file(str(directory / f)))
    return tensors, config
