"""Create a tiny, randomly initialised Hugging Face checkpoint for smoke runs of the example recipes.

    python tools/make_tiny_hf.py --out smoke/hf_phase1 --arch crystalcoder --preset tiny-crystal \
        --tokenizer-model smoke/tokenizer/smoke.model --special-tokens crystal
    python tools/make_tiny_hf.py --out smoke/hf_llama --arch llama --preset tiny --vocab-size 512

The shape comes from a --model-preset of pretrain_llama.py (any shape flag below overrides it).
crystalcoder: CrystalCoder's published layout (GPT-2 names, Conv1D weights [in, out], fused QKV, biases,
LayerNorm, partial GPT-J RoPE, μP fields in config.json), as LLM360's phase checkpoints are stored.
llama: transformers' LlamaForCausalLM. The vocabulary is the tokenizer's (SentencePiece .model, plus
--special-tokens and padding as pretrain_llama.py computes it), or --vocab-size; the tokenizer file is
copied into the checkpoint as tokenizer.model, so the converters carry it along.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys


ARCHS = ("crystalcoder", "llama")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="directory to create")
    p.add_argument("--arch", choices=ARCHS, default="crystalcoder")
    p.add_argument("--preset", default=None, help="shape preset (default: tiny-crystal / tiny)")
    p.add_argument("--tokenizer-model", default=None, help="SentencePiece .model to size the vocabulary from")
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

        return build_tokenizer("SentencePieceTokenizer", args.tokenizer_model,
                               special_tokens=args.special_tokens, vocab_pad_to=args.vocab_pad_to).vocab_size
    if args.vocab_size:
        return args.vocab_size
    raise SystemExit("error: give --tokenizer-model or --vocab-size")


def shape(args) -> dict:
    from megatron_ext.models.presets import preset_flags

    s = preset_flags(args.preset or ("tiny-crystal" if args.arch == "crystalcoder" else "tiny"))
    for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "seq_length"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.path.exists(args.out):
        if not args.overwrite:
            raise SystemExit(f"error: {args.out} exists (pass --overwrite to replace it)")
        shutil.rmtree(args.out)
    s = shape(args)
    os.makedirs(args.out)
    (write_crystalcoder if args.arch == "crystalcoder" else write_llama)(args.out, s, args.seed)
    if args.tokenizer_model:
        shutil.copy2(args.tokenizer_model, os.path.join(args.out, "tokenizer.model"))
    print(f" > wrote {args.out} ({args.arch}: {s['num_layers']} layers, hidden {s['hidden_size']}, "
          f"vocab {s['vocab_size']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
