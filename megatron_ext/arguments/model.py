"""Model-shape flags (Megatron-LM names). Defaults of None are filled from --model-preset."""

import argparse


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model-preset", default=None,
                   help="named architecture (see megatron_ext/models/presets.py); flags override it")
    g.add_argument("--num-layers", type=int)
    g.add_argument("--hidden-size", type=int)
    g.add_argument("--ffn-hidden-size", type=int)
    g.add_argument("--num-attention-heads", type=int)
    g.add_argument("--group-query-attention", action="store_true", default=None)
    g.add_argument("--num-query-groups", type=int)
    g.add_argument("--kv-channels", type=int, help="head dim; default hidden / heads")
    g.add_argument("--max-position-embeddings", type=int)
    g.add_argument("--normalization", choices=["RMSNorm", "LayerNorm"])
    g.add_argument("--norm-epsilon", type=float)
    g.add_argument("--swiglu", action="store_true", default=True, 
                   help="accepted for Megatron-LM scripts, a no-op: SwiGLU is the only MLP here, so "
                        "omitting it does not give Megatron-LM's GeLU MLP")
    g.add_argument("--add-bias-linear", dest="add_bias_linear", action="store_true", default=None)
    g.add_argument("--disable-bias-linear", dest="add_bias_linear", action="store_false")
    g.add_argument("--add-qkv-bias", action="store_true", default=None)
    g.add_argument("--position-embedding-type", choices=["rope"], default="rope",
                   help="rotary embeddings only (LLaMA); there are no learned absolute positions")
    g.add_argument("--no-position-embedding", action="store_true",
                   help="accepted for Megatron-LM scripts (which pass it for RoPE models), a no-op: no learned "
                        "absolute position embedding exists here")
    g.add_argument("--attention-dropout", type=float, default=0.0,
                   help="dropout on the attention probabilities (LLaMA: 0.0; Megatron-LM's default is 0.1)")
    g.add_argument("--hidden-dropout", type=float, default=0.0,
                   help="dropout after the embedding and on each attention/MLP output before the residual add "
                        "(LLaMA: 0.0; Megatron-LM's default is 0.1)")
    g.add_argument("--transformer-impl", choices=["local", "transformer_engine"], default="local",
                   help="local: this project's layer spec (the only one); transformer_engine is refused")
    g.add_argument("--use-mcore-models", action="store_true",
                   help="accepted for Megatron-LM scripts, a no-op: every model here is a megatron-core GPTModel")
    g.add_argument("--rotary-percent", type=float)
    g.add_argument("--rotary-base", type=float)
    g.add_argument("--rotary-interleaved", action="store_true", default=None,
                   help="GPT-J 'rotate every two' instead of LLaMA's half split")
    g.add_argument("--untie-embeddings-and-output-weights", dest="tie_embeddings",
                   action="store_false", default=None)
    g.add_argument("--tie-embeddings-and-output-weights", dest="tie_embeddings", action="store_true")
    g.add_argument("--vocab-size", type=int, help="needed only without a tokenizer (NullTokenizer)")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="pad the vocabulary to this multiple (independent of TP so layouts interchange)")
    g.add_argument("--init-method-std", type=float)
    g.add_argument("--layer-spec", choices=["llama", "megatron-local"], default="llama",
                   help="llama: this project's modules and kernels; megatron-local: megatron-core's stock "
                        "local spec (a baseline for benchmarks)")
    g.add_argument("--kernels", choices=["auto", "triton", "torch"], default="auto",
                   help="fused Triton kernels (auto: Triton on CUDA, torch reference on CPU)")
    g.add_argument("--norm-impl", choices=["kernels", "apex"], default="kernels")
    g.add_argument("--attention-backend", choices=["auto", "flash", "sdpa"], default="auto")
    g.add_argument("--use-flash-attn", dest="attention_backend", action="store_const", const="flash")
