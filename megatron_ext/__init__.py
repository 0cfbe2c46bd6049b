"""Megatron-style 3D-parallel LLaMA pretraining on megatron-core."""
