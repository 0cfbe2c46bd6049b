"""Model-shape flags (Megatron-LM names). Defaults of None are filled from --model-preset."""

import argparse


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model-preset", default=None,
                   help="named architecture (see megatron_ext/models/presets.py); flags override it")
    g.add_argument("--num-layers", type=int,
                   help="transformer layers (preset: from --model-preset)")
    g.add_argument("--hidden-size", type=int,
                   help="model width")
    g.add_argument("--ffn-hidden-size", type=int,
                   help="MLP inner width (SwiGLU: per gate/up projection)")
    g.add_argument("--num-attention-heads", type=int,
                   help="query heads")
    g.add_argument("--group-query-attention", action="store_true", default=None,
                   help="grouped-query attention; set --num-query-groups")
    g.add_argument("--num-query-groups", type=int,
                   help="key/value heads with --group-query-attention (default: one per query head)")
    g.add_argument("--kv-channels", type=int, help="head dim; default hidden / heads")
    g.add_argument("--max-position-embeddings", type=int,
                   help="longest sequence the model is meant for (default: --seq-length)")
    g.add_argument("--normalization", choices=["RMSNorm", "LayerNorm"],
                   help="RMSNorm (LLaMA) or LayerNorm (default RMSNorm; preset may set it)")
    g.add_argument("--norm-epsilon", type=float,
                   help="epsilon of the norms (default 1e-5; preset may set it)")
    g.add_argument("--layernorm-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="LayerNorm with a bias (default); --no-layernorm-bias: gain only, as open_lm (DCLM-1B)")
    g.add_argument("--qk-norm", choices=["head", "full"], default=None,
                   help="normalise queries and keys before attention: head = one norm of head-dim channels "
                        "shared by all heads (Megatron-LM's --qk-layernorm); full = one norm over all heads of the "
                        "projection, before the head split (open_lm, DCLM-1B; exact under TP)")
    g.add_argument("--qk-layernorm", dest="qk_norm", action="store_const", const="head",
                   help="Megatron-LM's flag: same as --qk-norm head")
    g.add_argument("--init-method", choices=["normal", "open_lm"], default=None,
                   help="normal: std --init-method-std, residual outputs / sqrt(2 x layers), cut at 2 std; "
                        "open_lm: std 1/sqrt(fan-in), residual outputs / sqrt(2 (layer + 1)), cut at 3 std "
                        "(a from-scratch DCLM run)")
    g.add_argument("--swiglu", action="store_true", default=True, 
                   help="accepted for Megatron-LM scripts, a no-op: SwiGLU is the only MLP here, so "
                        "omitting it does not give Megatron-LM's GeLU MLP")
    g.add_argument("--add-bias-linear", dest="add_bias_linear", action="store_true", default=None,
                   help="biases in every linear layer (Crystal); LLaMA has none")
    g.add_argument("--disable-bias-linear", dest="add_bias_linear", action="store_false",
                   help="no biases in linear layers (LLaMA, the default)")
    g.add_argument("--add-qkv-bias", action="store_true", default=None,
                   help="bias on the QKV projection only (default: as --add-bias-linear)")
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
    g.add_argument("--rotary-percent", type=float,
                   help="fraction of each head's channels rotated by RoPE (default 1.0)")
    g.add_argument("--rotary-base", type=float,
                   help="RoPE base frequency (default 10000)")
    g.add_argument("--rotary-interleaved", action="store_true", default=None,
                   help="GPT-J 'rotate every two' instead of LLaMA's half split")
    g.add_argument("--untie-embeddings-and-output-weights", dest="tie_embeddings",
                   action="store_false", default=None,
                   help="separate input embedding and output layer (LLaMA, the default)")
    g.add_argument("--tie-embeddings-and-output-weights", dest="tie_embeddings", action="store_true",
                   help="share the input embedding with the output layer")
    g.add_argument("--vocab-size", type=int, help="needed only without a tokenizer (NullTokenizer)")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="pad the vocabulary to this multiple (independent of TP so layouts interchange)")
    g.add_argument("--init-method-std", type=float,
                   help="standard deviation of the normal weight initialisation (default 0.02)")
    g.add_argument("--layer-spec", choices=["llama", "megatron-local"], default="llama",
                   help="llama: this project's modules and kernels; megatron-local: megatron-core's stock "
                        "local spec (a baseline for benchmarks)")
    g.add_argument("--kernels", choices=["auto", "triton", "torch"], default="auto",
                   help="fused Triton kernels (auto: Triton on CUDA, torch reference on CPU)")
    g.add_argument("--norm-impl", choices=["kernels", "apex"], default="kernels",
                   help="norms through megatron_ext.kernels, or apex's fused norms (CUDA, apex installed)")
    g.add_argument("--attention-backend", choices=["auto", "flash", "sdpa"], default="auto",
                   help="auto: flash-attn on CUDA with bf16/fp16 when installed, else torch SDPA")
    g.add_argument("--use-flash-attn", dest="attention_backend", action="store_const", const="flash",
                   help="Megatron-LM's flag: same as --attention-backend flash")
