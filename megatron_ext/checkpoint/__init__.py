"""Checkpoints in megatron-core's torch_dist format (atomic save, resharding load) and HF maps."""
