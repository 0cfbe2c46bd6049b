"""Create a tiny, randomly initialised Hugging Face checkpoint for smoke runs of the example recipes.

    python tools/make_tiny_hf.py --out smoke/hf_phase1 --arch crystalcoder --preset tiny-crystal \
        --tokenizer-model smoke/tokenizer/smoke.model --special-tokens crystal
    python tools/make_tiny_hf.py --out smoke/hf_llama --arch llama --preset tiny --vocab-size 512
    python tools/make_tiny_hf.py --out smoke/hf_dclm --arch openlm --tokenizer-model smoke/tokenizer/neox \
        --vocab-pad-to 512

The shape comes from a --model-preset of pretrain_llama.py (any shape flag below overrides it).
crystalcoder: CrystalCoder's published layout (GPT-2 names, Conv1D weights [in, out], fused QKV, biases,
LayerNorm, partial GPT-J RoPE, μP fields in config.json), as LLM360's phase checkpoints are stored.
llama: transformers' LlamaForCausalLM.
openlm: open_lm's layout as TRI-ML/DCLM-1B publishes it (config.json with open_lm's flat keys;
model.tok_embeddings, model.layers.N.attention.{in_proj,out_proj,q_norm,k_norm}, the float32 rotary buffer
model.layers.N.attention.pos_embed.inv_freq, model.layers.N.feed_forward.{w12,w3},
model.layers.N.{attention_norm,ffn_norm}, model.norm, model.output), shaped from tiny-dclm; the FFN width is
open_lm's 256*((int(8*dim/3)+255)//256), weights use open_lm's init scales, norm gains 1+0.3*N(0,1) (so a
dropped or misplaced gain shows).
The vocabulary is the tokenizer's (a SentencePiece .model, or a Hugging Face tokenizer directory such as
tools/train_tokenizer.py --type bpe writes, plus --special-tokens and padding as pretrain_llama.py computes
it), or --vocab-size. The tokenizer is copied into the checkpoint (a .model as tokenizer.model, a directory's
tokenizer files as they are), so the converters carry it along.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys


ARCHS = ("crystalcoder", "llama", "openlm")
DEFAULT_PRESET = {"crystalcoder": "tiny-crystal", "llama": "tiny", "openlm": "tiny-dclm"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory to create")
    p.add_argument("--arch", choices=ARCHS, default="crystalcoder")
    p.add_argument("--preset", default=None, help="shape preset (default: tiny-crystal / tiny / tiny-dclm)")
    p.add_argument("--tokenizer-model", default=None,
                   help="SentencePiece .model, or a Hugging Face tokenizer directory, to size the vocabulary from")
    p.add_argument("--special-tokens", default=None, help="as pretrain_llama.py's flag, e.g. crystal")
    p.add_argument("--vocab-pad-to", type=int, default=None, help="as pretrain_llama.py's flag")
    p.add_argument("--vocab-size", type=int, default=None, help="vocabulary size without a tokenizer")
    for flag in ("num-layers", "hidden-size", "ffn-hidden-size", "num-attention-heads", "seq-length"):
        p.add_argument(f"--{flag}", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def vocabulary_size(args) -> int:
    if args.tokenizer_model:
        from megatron_ext.data.tokenizers import build_tokenizer

        kind = "HuggingFaceTokenizer" if os.path.isdir(args.tokenizer_model) else "SentencePieceTokenizer"
        return build_tokenizer(kind, args.tokenizer_model,
                               special_tokens=args.special_tokens, vocab_pad_to=args.vocab_pad_to).vocab_size
    if args.vocab_size:
        return args.vocab_size
    raise SystemExit("error: give --tokenizer-model or --vocab-size")


def shape(args) -> dict:
    from megatron_ext.models.presets import preset_flags

    s = preset_flags(args.preset or DEFAULT_PRESET[args.arch])
    for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "seq_length"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.arch == "openlm":  # config.json has no FFN width: open_lm derives it from dim
        ffn = openlm_ffn_hidden_size(s["hidden_size"])
        if args.ffn_hidden_size is not None and args.ffn_hidden_size != ffn:
            raise SystemExit(f"error: open_lm's FFN width follows the hidden size ({ffn} for "
                             f"{s['hidden_size']}); --ffn-hidden-size {args.ffn_hidden_size} cannot be expressed")
        s["ffn_hidden_size"] = ffn
    s["vocab_size"] = vocabulary_size(args)
    return s


def write_crystalcoder(out: str, s: dict, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    h, f, layers, heads, vocab = (s["hidden_size"], s["ffn_hidden_size"], s["num_layers"],
                                  s["num_attention_heads"], s["vocab_size"])
    head_dim = h // heads
    base = s.get("mup_base_hidden_size") or 256
    g = torch.Generator().manual_seed(seed)

    def rand(*shp, std=0.02, offset=0.0):
        return torch.randn(*shp, generator=g) * std + offset

    hidden_std = 0.073 / (h / base) ** 0.5
    out_std = 0.073 / (2 * (h / base) * layers) ** 0.5
    t = {"transformer.wte.weight": rand(vocab, h, std=0.073),
         "transformer.ln_f.weight": torch.ones(h), "transformer.ln_f.bias": torch.zeros(h)}
    for i in range(layers):
        p = f"transformer.h.{i}."
        t.update({
            p + "ln_1.weight": torch.ones(h), p + "ln_1.bias": torch.zeros(h),
            p + "attn.c_attn.weight": rand(h, 3 * h, std=hidden_std), p + "attn.c_attn.bias": torch.zeros(3 * h),
            p + "attn.c_proj.weight": rand(h, h, std=out_std), p + "attn.c_proj.bias": torch.zeros(h),
            p + "ln_2.weight": torch.ones(h), p + "ln_2.bias": torch.zeros(h),
            p + "mlp.c_fc.weight": rand(h, f, std=hidden_std), p + "mlp.c_fc.bias": torch.zeros(f),
            p + "mlp.c_fc2.weight": rand(h, f, std=hidden_std), p + "mlp.c_fc2.bias": torch.zeros(f),
            p + "mlp.c_proj.weight": rand(f, h, std=out_std), p + "mlp.c_proj.bias": torch.zeros(h),
        })
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    config = {
        "activation_function": "swiglu", "architectures": ["CrystalCoderLMHeadModel"], "attn_pdrop": 0.0,
        "auto_map": {"AutoConfig": "configuration_crystalcoder.CrystalCoderConfig",
                     "AutoModel": "modeling_crystalcoder.CrystalCoderModel",
                     "AutoModelForCausalLM": "modeling_crystalcoder.CrystalCoderLMHeadModel"},
        "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 2, "initializer_range": 0.02,
        "layer_norm_epsilon": s.get("norm_epsilon", 1e-5), "model_type": "crystalcoder",
        "mup_embeddings_scale": s.get("mup_embeddings_scale", 14.6), "mup_output_alpha": s.get("mup_output_alpha", 2.22),
        "mup_scale_qk_dot_by_d": bool(s.get("mup_scale_qk_dot_by_d", True)), "mup_width_scale": base / h,
        "n_embd": h, "n_head": heads, "n_inner": f, "n_layer": layers, "n_positions": s["seq_length"],
        "position_embedding_type": "rotary", "reorder_and_upcast_attn": False, "resid_pdrop": 0.0,
        "rotary_dim": int(head_dim * s.get("rotary_percent", 0.25)), "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True, "tie_word_embeddings": True, "torch_dtype": "float32", "use_cache": True,
        "vocab_size": vocab,
    }
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)


def write_llama(out: str, s: dict, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=s["hidden_size"], intermediate_size=s["ffn_hidden_size"],
                         num_hidden_layers=s["num_layers"], num_attention_heads=s["num_attention_heads"],
                         num_key_value_heads=s.get("num_query_groups") if s.get("group_query_attention")
                         else s["num_attention_heads"],
                         vocab_size=s["vocab_size"], max_position_embeddings=s["seq_length"],
                         rms_norm_eps=s.get("norm_epsilon", 1e-6), tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)


def openlm_ffn_hidden_size(dim: int) -> int:
    """open_lm's SwiGLU width (open_lm/model.py:254): 5632 for dim 2048, 256 for 64."""
    return 256 * ((int(8 * dim / 3) + 255) // 256)


def write_openlm(out: str, s: dict, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    dim, layers, heads, vocab = s["hidden_size"], s["num_layers"], s["num_attention_heads"], s["vocab_size"]
    hidden, head_dim = s["ffn_hidden_size"], dim // heads
    g = torch.Generator().manual_seed(seed)

    def weight(rows, cols, std):  # open_lm: trunc_normal_ at +-3 std
        return torch.randn(rows, cols, generator=g).clamp(-3, 3) * std

    def gain(n):
        return 1.0 + 0.3 * torch.randn(n, generator=g)

    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))  # rotary.py:60, float32
    t = {"model.tok_embeddings.weight": weight(vocab, dim, dim ** -0.5)}
    for i in range(layers):
        p, depth = f"model.layers.{i}.", math.sqrt(2 * (i + 1))  # output projections / sqrt(2 (layer + 1))
        t.update({
            p + "attention.in_proj.weight": weight(3 * dim, dim, dim ** -0.5),
            p + "attention.out_proj.weight": weight(dim, dim, dim ** -0.5 / depth),
            p + "attention.q_norm.weight": gain(dim), p + "attention.k_norm.weight": gain(dim),
            p + "attention.pos_embed.inv_freq": inv_freq.clone(),
            p + "feed_forward.w12.weight": weight(2 * hidden, dim, dim ** -0.5),
            p + "feed_forward.w3.weight": weight(dim, hidden, hidden ** -0.5 / depth),
            p + "attention_norm.weight": gain(dim), p + "ffn_norm.weight": gain(dim),
        })
    t.update({"model.norm.weight": gain(dim), "model.output.weight": weight(vocab, dim, dim ** -0.5)})
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(out, "model.safetensors"),
              metadata={"format": "pt"})
    # TRI-ML/DCLM-1B's config.json: open_lm's Params as flat keys, in its order and with its values.
    config = {
        "architectures": ["OpenLMModel"], "model_type": "openlm", "params": None, "apply_qk_norm": True,
        "attn_activation": None, "attn_name": "torch_attn", "attn_seq_scalar": None, "attn_seq_scalar_alpha": None,
        "dim": dim, "ffn_type": "swiglu_torch", "model": "open_lm_tiny_swiglutorch",
        "norm_type": "gain_only_lp_layer_norm", "moe_capacity_factor": 1.25, "moe_expert_model_parallelism": False,
        "moe_freq": 0, "moe_loss_weight": 0.1, "moe_num_experts": None, "moe_top_k": 2,
        "moe_weight_parallelism": False, "n_heads": heads, "n_layers": layers, "norm_eps": 1e-05,
        "positional_embedding_type": "rotary", "post_embed_norm": False, "qk_norm": True,
        "seq_len": s["seq_length"], "vocab_size": vocab, "weight_tying": False, "torch_dtype": "float32",
        "transformers_version": "4.40.2",
    }
    with open(os.path.join(out, "config.json"), "w") as fh:
        json.dump(config, fh, indent=2)


def copy_tokenizer(tokenizer_model: str, out: str) -> None:
    if os.path.isdir(tokenizer_model):
        from megatron_ext.checkpoint.hf_files import copy_tokenizer as copy_tokenizer_files

        if not copy_tokenizer_files(tokenizer_model, out):
            raise SystemExit(f"error: no tokenizer files in {tokenizer_model}")
    else:
        shutil.copy2(tokenizer_model, os.path.join(out, "tokenizer.model"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.path.exists(args.out):
        if not args.overwrite:
            raise SystemExit(f"error: {args.out} exists (pass --overwrite to replace it)")
        shutil.rmtree(args.out)
    s = shape(args)
    os.makedirs(args.out)
    {"crystalcoder": write_crystalcoder, "llama": write_llama, "openlm": write_openlm}[args.arch](args.out, s, args.seed)
    if args.tokenizer_model:
        copy_tokenizer(args.tokenizer_model, args.out)
    print(f" > wrote {args.out} ({args.arch}: {s['num_layers']} layers, hidden {s['hidden_size']}, "
          f"vocab {s['vocab_size']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
