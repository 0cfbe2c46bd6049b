"""torchrun worker: pretrain_llama.py whose process dies in the middle of its second checkpoint save.

The first save completes. During the second, megatron-core's writer is replaced by one that writes
part of the shard files and then kills the process with SIGKILL (no cleanup, no exception handlers),
as a node failure or an out-of-memory kill would, together with the helper processes megatron-core's
checkpoint writer started (they share the worker's process group, which torchrun creates per worker).
"""

import os
import signal
import sys

from megatron_ext.checkpoint import dist as checkpoint_dist
from megatron_ext.training.pretrain import pretrain

_real_save = checkpoint_dist.dist_checkpointing.save
_saves = []


def save_then_die(state, directory, *args, **kwargs):
    _saves.append(directory)
    if len(_saves) < 2:
        return _real_save(state, directory, *args, **kwargs)
    with open(os.path.join(directory, "__0_0.distcp"), "wb") as f:  # a half-written shard
        f.write(b"\0" * 1000)
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


checkpoint_dist.dist_checkpointing.save = save_then_die

if __name__ == "__main__":
    pretrain(sys.argv[1:])
