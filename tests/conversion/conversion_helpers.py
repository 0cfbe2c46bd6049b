"""Shared by the conversion tests: small random Hugging Face checkpoints, an independent float64
forward of the Crystal architecture, and whole-tensor reads of torch_dist checkpoints."""

import json
import math
import os
import subprocess
import sys

import torch
from launch import REPO, subprocess_env

# Tokens for every logits comparison: include the last real token id (vocabularies below are >= 500).
TOKENS = [[1, 5, 499, 17, 300, 2, 64, 250, 0, 33], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]


def run_tool(name: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    """tools/NAME.py as a user runs it; stdout+stderr in .stdout."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / f"{name}.py"), "--no-progress", *map(str, args)],
                          cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:]
    return proc


def save_word_tokenizer(directory, vocab_size: int) -> None:
    """A tiny whole-word tokenizer in Hugging Face's format (what the converters must carry along)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab_size)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="w1", eos_token="w2").save_pretrained(directory)


def random_llama(directory, *, tied: bool, seed: int = 0) -> None:
    """LlamaForCausalLM with GQA, head_dim 100 (heads x head_dim != hidden) and a vocabulary of 1000
    (not a multiple of 128), randomly initialised, saved with a tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=192, intermediate_size=320, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=100, vocab_size=1000, max_position_embeddings=64,
                         rms_norm_eps=1e-5, tie_word_embeddings=tied, rope_parameters={"rope_theta": 5e5,
                                                                                       "rope_type": "default"})
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # norms away from 1 so a mix-up of norm weights shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(directory)
    save_word_tokenizer(directory, 1000)


def llama_logits(directory, tokens=TOKENS) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits


# ---- Crystal (CrystalCoder's published layout) -------------------------------------------------

CRYSTAL_CONFIG = {  # the tiny-crystal preset's shapes, with the fields of CrystalCoder's published config
    "activation_function": "swiglu", "architectures": ["CrystalCoderLMHeadModel"], "attn_pdrop": 0.0,
    "auto_map": {"AutoConfig": "configuration_crystalcoder.CrystalCoderConfig",
                 "AutoModel": "modeling_crystalcoder.CrystalCoderModel",
                 "AutoModelForCausalLM": "modeling_crystalcoder.CrystalCoderLMHeadModel"},
    "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 2, "initializer_range": 0.02, "layer_norm_epsilon": 1e-5,
    "model_type": "crystalcoder", "mup_embeddings_scale": 14.6, "mup_output_alpha": 2.22,
    "mup_scale_qk_dot_by_d": True, "mup_width_scale": 0.5, "n_embd": 64, "n_head": 4, "n_inner": 176, "n_layer": 4,
    "n_positions": 64, "position_embedding_type": "rotary", "reorder_and_upcast_attn": False, "resid_pdrop": 0.0,
    "rotary_dim": 4, "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True,
    "torch_dtype": "float32", "use_cache": True, "vocab_size": 500,
}


def random_crystal(directory, seed: int = 0) -> None:
    """Random weights in CrystalCoder's layout (Conv1D weights [in, out]), biases and norms non-trivial."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    c = CRYSTAL_CONFIG
    h, f = c["n_embd"], c["n_inner"]

    def rand(*shape, scale=0.1, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    tensors = {"transformer.wte.weight": rand(c["vocab_size"], h, scale=0.05),
               "transformer.ln_f.weight": rand(h, offset=1.0), "transformer.ln_f.bias": rand(h)}
    for layer in range(c["n_layer"]):
        p = f"transformer.h.{layer}."
        tensors.update({
            p + "ln_1.weight": rand(h, offset=1.0), p + "ln_1.bias": rand(h),
            p + "attn.c_attn.weight": rand(h, 3 * h), p + "attn.c_attn.bias": rand(3 * h),
            p + "attn.c_proj.weight": rand(h, h), p + "attn.c_proj.bias": rand(h),
            p + "ln_2.weight": rand(h, offset=1.0), p + "ln_2.bias": rand(h),
            p + "mlp.c_fc.weight": rand(h, f), p + "mlp.c_fc.bias": rand(f),
            p + "mlp.c_fc2.weight": rand(h, f), p + "mlp.c_fc2.bias": rand(f),
            p + "mlp.c_proj.weight": rand(f, h), p + "mlp.c_proj.bias": rand(h),
        })
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w") as fh:
        json.dump(CRYSTAL_CONFIG, fh, indent=2)
    save_word_tokenizer(directory, c["vocab_size"])


def crystal_reference_logits(directory, tokens=TOKENS) -> torch.Tensor:
    """float64 forward of a CrystalCoder checkpoint, from the architecture's published description:
    x = wte[tokens] * mup_embeddings_scale; per block x += attn(ln_1(x)); x += mlp(ln_2(x)), where
    attn: [q|k|v] = x W_attn + b (Conv1D), GPT-J RoPE ("rotate every two", base 10000) on the first
    rotary_dim channels of each head, scores q.k / head_dim (mup_scale_qk_dot_by_d), causal softmax,
    out = heads W_proj + b; mlp = c_proj(c_fc(x) * silu(c_fc2(x))); logits = ln_f(x) wte^T x
    mup_output_alpha x mup_width_scale."""
    from safetensors.torch import load_file

    with open(os.path.join(directory, "config.json")) as fh:
        c = json.load(fh)
    w = {k: v.double() for k, v in load_file(os.path.join(directory, "model.safetensors")).items()}
    heads, hidden = c["n_head"], c["n_embd"]
    d, r = hidden // heads, c["rotary_dim"]
    ids = torch.tensor(tokens)
    seq = ids.shape[1]

    def ln(x, name):
        return torch.nn.functional.layer_norm(x, (hidden,), w[name + ".weight"], w[name + ".bias"],
                                              c["layer_norm_epsilon"])

    angles = torch.arange(seq, dtype=torch.float64)[:, None] / 10000.0 ** (torch.arange(0, r, 2) / r)
    cos, sin = torch.cos(angles)[:, None, :], torch.sin(angles)[:, None, :]  # [s, 1, r/2]

    def rope(t):  # t [b, s, heads, d]: pairs (2i, 2i+1) rotate by angle i
        x1, x2 = t[..., 0:r:2], t[..., 1:r:2]
        rotated = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
        return torch.cat([rotated, t[..., r:]], dim=-1)

    x = w["transformer.wte.weight"][ids] * c["mup_embeddings_scale"]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    scale = d ** (-1.0 if c["mup_scale_qk_dot_by_d"] else -0.5)
    for layer in range(c["n_layer"]):
        p = f"transformer.h.{layer}."
        qkv = ln(x, p + "ln_1") @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (t.reshape(*t.shape[:2], heads, d) for t in qkv.split(hidden, dim=-1))
        q, k = rope(q), rope(k)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        attn = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(*x.shape)
        x = x + attn @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = ln(x, p + "ln_2")
        up = h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
        gate = h @ w[p + "mlp.c_fc2.weight"] + w[p + "mlp.c_fc2.bias"]
        x = x + (up * torch.nn.functional.silu(gate)) @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    return ln(x, "transformer.ln_f") @ w["transformer.wte.weight"].T * (c["mup_output_alpha"] * c["mup_width_scale"])


# ---- torch_dist checkpoints --------------------------------------------------------------------

def model_tensors(iteration_dir) -> dict:
    """Every model tensor (not optimizer state) of a torch_dist checkpoint, whole, by key."""
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = dcp.FileSystemReader(str(iteration_dir)).read_metadata()
    state = {k: torch.empty(md.size, dtype=md.properties.dtype) for k, md in metadata.state_dict_metadata.items()
             if isinstance(md, TensorStorageMetadata) and not k.startswith("optimizer")}
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(iteration_dir)), no_dist=True)
    return state


def stored_entries(iteration_dir) -> dict:
    """key -> global shape (tensors) or None (objects), model entries only."""
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = dcp.FileSystemReader(str(iteration_dir)).read_metadata()
    return {k: (tuple(md.size) if isinstance(md, TensorStorageMetadata) else None)
            for k, md in metadata.state_dict_metadata.items() if not k.startswith(("optimizer", "rng_state"))}


def load_common(iteration_dir) -> dict:
    return torch.load(os.path.join(iteration_dir, "common.pt"), map_location="cpu", weights_only=True)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-4, what: str = "logits") -> None:
    diff = (actual.double() - expected.double()).abs().max().item()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    assert diff < atol and math.isfinite(diff), f"{what}: max abs diff {diff:.3g} >= {atol}"


def save_common(iteration_dir, common: dict) -> None:
    """Rewrite a checkpoint's common.pt as a test scenario needs, keeping its checksums true (a load or
    an export verifies them, and the scenario is not a damaged file)."""
    from megatron_ext.checkpoint.integrity import write_checksums

    torch.save(common, os.path.join(iteration_dir, "common.pt"))
    write_checksums(str(iteration_dir))
