"""Text generation from a checkpoint: load.py builds the parallel model of a checkpoint for inference at any
TP/PP, generate.py runs the batched loop with megatron-core's KV cache, sampling.py picks tokens, prompts.py
reads and encodes prompts (plain text or chat messages). tools/generate.py is the command line;
docs/generation.md the guide."""
