"""Pretrain a LLaMA-family model with tensor, pipeline and data parallelism on megatron-core.

    torchrun --nproc-per-node 8 pretrain_llama.py --model-preset amber-7b --tensor-model-parallel-size 2 ...

Flags follow Megatron-LM's names; `python pretrain_llama.py --help` lists them.
"""

from megatron_ext.training.pretrain import pretrain

if __name__ == "__main__":  # the guard matters: dist_checkpointing starts worker processes
    pretrain()
