"""Every place this project works around megatron-core 0.16.1, in one module.

Each section says what upstream does, why that breaks us, what we do, and which upstream change would
make the workaround removable. Each has a canary in tests/test_megatron_compat.py
(`test_upstream_still_<behaviour>`) that runs megatron-core WITHOUT the workaround and asserts the
behaviour is still there: after a megatron-core upgrade, a failing canary names the workaround that can
go (delete it here and at its call site, then run the tests named in its section).

Moved here, used by:
  1. OPTIM_METADATA                          checkpoint/dist.py (save and load)
  2. allocate_distributed_optimizer_state    checkpoint/dist.py (load)
  3. distributed_optimizer_step_fix          checkpoint/dist.py (load)
  4. start_write_results_queue               checkpoint/dist.py (save)
  5. drop_empty_splits                       data/datasets.py
  6. single_process_group_if_needed          data/datasets.py
  7. token_count_weights                     data/datasets.py

Kept at their call site (moving them would separate them from the code they shape), listed here:
  8. μP LR multipliers as per-group max_lr/min_lr: mup/optimizer.py `_signature_override`. Upstream:
     OptimizerParamScheduler ignores a param group's `lr_mult` and schedules each group between its own
     `max_lr` and `min_lr` (default: the scheduler's). We override max_lr/min_lr with the multiplied
     values (and still set `lr_mult`, which megatron uses to match groups on checkpoint load). The `mup`
     package is self-contained (torch only), so it does not import this module. Removable when the
     scheduler multiplies by lr_mult again: then `max_lr`/`min_lr` need not be overridden. Canary:
     test_upstream_still_ignores_lr_mult. Its warm-up also starts every group at the one init_lr
     (--lr-warmup-init), so training/optimizer.py's GroupScaledWarmupScheduler starts each at
     init_lr x its multiplier (mup.optimizer.warmup_init_lr); removable with the same upstream change.
  9. CPU redirection: megatron_ext/platform.py `enable_cpu_redirection` (the platform layer by design).
     Upstream assumes CUDA (torch.cuda.current_device() allocations, CUDA RNG state in the tensor-parallel
     RNG tracker, literal device="cuda" factories, Tensor.cuda(), clip_grads' 'torch.cuda.FloatTensor'
     assertion); on CPU those are redirected for the whole process. Removable only if megatron-core
     becomes device-agnostic; exercised by every CPU test that trains.
 10. Pipeline settings on gloo: megatron_ext/models/config.py `transformer_config`:
     deallocate_pipeline_outputs is off on CPU (upstream frees a stage's output once sent, but gloo
     sends asynchronously from the tensor's storage, so later micro-batches are corrupted), and batched
     p2p is off with virtual pipeline stages (batched sends to a peer that is both previous and next
     stage can pair up crosswise). Covered by tests/training/test_layout_parity.py.
 11. Tokenizers: megatron_ext/data/tokenizers.py subclasses MegatronTokenizerBase directly because
     upstream's MegatronTokenizer.from_pretrained wants a metadata.json next to every model file.
"""

from __future__ import annotations

import contextlib
import logging
from multiprocessing.managers import SyncManager
from typing import Sequence

import torch

from megatron_ext.training.stopping import ignore_exit_signals

logger = logging.getLogger("megatron_ext.data.datasets")  # the warnings keep the logger they had


# ---------------------------------------------------------------------------------------------------
# 1. Distributed optimizer checkpoint format
#
# Upstream: DistributedOptimizer.sharded_state_dict() without metadata uses 'fully_sharded_model_space',
#   which 0.16.1 marks deprecated and which fails to save for us.
# We: always pass metadata asking for 'fully_reshardable' (the state in canonical per-parameter form,
#   so it reshards across TP, PP and DP), and chained_optim_avoid_prefix.
# Removable: keep passing an explicit format regardless; only the reason changes if upstream's default
#   becomes a working reshardable format. Canary: test_upstream_still_defaults_to_fully_sharded_model_space.
# ---------------------------------------------------------------------------------------------------

OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}


# ---------------------------------------------------------------------------------------------------
# 2. A fresh distributed optimizer cannot describe what to load
#
# Upstream: DistributedOptimizer.sharded_state_dict(is_loading=True) reads the live Adam state
#   (exp_avg, exp_avg_sq, ...) to build the load targets; an optimizer that has not stepped has none,
#   and the call fails.
# We: allocate the state with upstream's own _init_optimizer_states_with_dummy_values (any values: the
#   load overwrites them) before asking for the sharded state dict.
# Removable when sharded_state_dict(is_loading=True) works on a fresh optimizer.
#   Canary: test_upstream_still_needs_allocated_state_to_load.
# ---------------------------------------------------------------------------------------------------

def allocate_distributed_optimizer_state(optimizer) -> None:
    """A fresh distributed optimizer has no Adam state yet; megatron-core 0.16.1 needs it allocated
    (any values: the load overwrites them) before it can describe what to load."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(inner, DistributedOptimizer) and not inner.optimizer.state:
            inner._init_optimizer_states_with_dummy_values()


# ---------------------------------------------------------------------------------------------------
# 3. Adam's 'step' when a distributed optimizer loads fully_reshardable state into torch's Adam
#
# Upstream (no apex/TE, i.e. torch's Adam), two bugs:
#   a) load_parameter_state_from_fully_reshardable copies every key of the live Adam state, 'step'
#      included, from a source that never has 'step' (upstream restores step separately): KeyError 'step'.
#   b) load_state_dict gives every parameter the SAME 'step' tensor; torch's foreach Adam then
#      increments it once per parameter each step, which corrupts bias correction.
# We: during the load, hide 'step' from _set_main_param_and_optimizer_states (a); afterwards give each
#   parameter its own copy of its step (b).
# Removable: (a) when _set_main_param_and_optimizer_states skips keys the source lacks (canary
#   test_upstream_still_raises_keyerror_step_on_fully_reshardable_load); (b) when load_state_dict gives
#   each parameter its own step tensor (canary test_upstream_still_shares_one_step_tensor). Behaviour
#   covered by tests/checkpoint/test_checkpoint_resume.py -k distributed_optimizer.
# ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def distributed_optimizer_step_fix(optimizer):
    """Two megatron-core 0.16.1 bugs when a distributed optimizer loads into torch's Adam (no apex/TE):
    - loading fully_reshardable state copies every key of the live Adam state, including 'step', from a
      source that never has 'step' (it restores step separately) -> KeyError. Hide 'step' during that copy.
    - it gives every parameter the SAME 'step' tensor, which torch's foreach Adam then increments once
      per parameter each step, corrupting bias correction. Give each parameter its own copy."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states_keeping_step(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state[self.optimizer.param_groups[group_index]["params"][group_order]]
        step = state.pop("step", None) if "step" not in tensors else None
        try:
            original(self, model_param, tensors)
        finally:
            if step is not None:
                state["step"] = step

    DistributedOptimizer._set_main_param_and_optimizer_states = set_states_keeping_step
    try:
        yield
    finally:
        DistributedOptimizer._set_main_param_and_optimizer_states = original
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(inner, DistributedOptimizer):
            for state in inner.optimizer.state.values():
                if "step" in state:
                    state["step"] = state["step"].clone()


# ---------------------------------------------------------------------------------------------------
# 4. The torch_dist writer's results queue dies with Slurm's SIGTERM
#
# Upstream: filesystem_async._get_write_results_queue() starts a multiprocessing Manager (spawn) on the
#   first save and reuses it for every later one. The Manager's process keeps default signal handling,
#   so Slurm's SIGTERM (or Ctrl-C's SIGINT, sent to the whole process group) kills it, and the save that
#   --exit-signal-handler makes on the way out fails with a broken pipe.
# We: start the Manager ourselves, deaf to SIGTERM/SIGINT (it ends with the trainer), and put its queue
#   where upstream looks for it (filesystem_async._results_queue).
# Removable when upstream's Manager ignores those signals (or the writer stops using a Manager).
#   Canary: test_upstream_still_starts_a_results_manager_that_dies_on_sigterm. Behaviour covered by
#   docs/reliability.md's SIGTERM tests.
# ---------------------------------------------------------------------------------------------------

def start_write_results_queue() -> None:
    """megatron-core 0.16.1's torch_dist writer starts a multiprocessing Manager on the first save and
    reuses it for every later one. Slurm's SIGTERM (and Ctrl-C's SIGINT) reach that process too, and
    without it the save that --exit-signal-handler makes on the way out fails with a broken pipe.
    Start it ourselves, deaf to those signals (it ends with the trainer)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        manager = SyncManager(ctx=torch.multiprocessing.get_context("spawn"))
        manager.start(initializer=ignore_exit_signals)
        filesystem_async._results_queue = manager.Queue()  # the proxy keeps the manager alive


# ---------------------------------------------------------------------------------------------------
# 5. A split that gets no documents hangs GPTDataset
#
# Upstream: the builder hands split i the documents [round(lo*n), round(hi*n)); with few documents a
#   small split (e.g. the 1 of "969,30,1") can get none. GPTDataset._get_num_epochs then adds zero
#   tokens per epoch until it has the tokens requested (at least one, even for 0 samples): forever.
# We: drop such a split (None) when no samples are asked of it, and raise a ValueError naming the
#   split otherwise.
# Removable when GPTDataset (or the builder) refuses or skips an empty split itself.
#   Canary: test_upstream_still_loops_on_a_split_with_no_documents.
# ---------------------------------------------------------------------------------------------------

def _is_first_rank() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def drop_empty_splits(config, prefixes: Sequence[str], num_samples: Sequence[int]) -> None:
    """Guard against a split that gets no documents.

    megatron-core hands split i the documents [round(lo*n), round(hi*n)); with
    few documents a small split (e.g. the 1 of "969,30,1") can get none, and
    GPTDataset then loops forever looking for enough tokens.  Such a split is
    dropped (returned as None) when no samples are requested from it, and is an
    error otherwise.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from megatron.core.datasets.utils import Split

    counts = {p: len(IndexedDataset(p)) for p in prefixes}  # reads only the .idx header
    for split in Split:
        bookends = config.split_matrix[split.value]
        if bookends is None:
            continue
        for prefix, n in counts.items():
            docs = int(round(bookends[1] * n)) - int(round(bookends[0] * n))
            if docs > 0:
                continue
            if num_samples[split.value] > 0:
                raise ValueError(
                    f"--split {config.split!r} gives the {split.name} split no documents of "
                    f"{prefix} ({n} documents in all) but {num_samples[split.value]} "
                    f"{split.name} samples were requested; use more documents or a split "
                    f"with a larger {split.name} share")
            if _is_first_rank():  # every rank builds its datasets; say it once
                logger.warning("%s split has no documents in %s; not building it",
                               split.name, prefix)
            config.split_matrix[split.value] = None
            break


# ---------------------------------------------------------------------------------------------------
# 6. BlendedDataset's index cache needs a process group
#
# Upstream: BlendedDataset calls torch.distributed.get_rank() when it builds its index with a cache
#   directory, which raises in a single process that has no process group (tools, tests, notebooks).
# We: open a one-rank gloo group on an in-memory store for the duration of the build.
# Removable when upstream checks torch.distributed.is_initialized() there (as GPTDataset does).
#   Canary: test_upstream_still_needs_a_process_group_to_cache_a_blend.
# ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def single_process_group_if_needed(needed: bool):
    """megatron-core's BlendedDataset calls torch.distributed.get_rank() when it
    writes its index cache, which raises without a process group.  For a blend
    with a cache directory in a single, non-distributed process we open a
    one-rank gloo group on an in-memory store for the duration of the build."""
    if not needed or torch.distributed.is_initialized():
        yield
        return
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------------
# 7. Unweighted blends hold one epoch of each dataset
#
# Upstream: a blend without weights (--data-path a b) gets no per-dataset sample targets, so each
#   dataset contributes exactly one epoch and the blend is shorter than the samples asked for.
# We: weight unweighted prefixes by their token counts, so "blend by size" holds and the datasets
#   repeat like a single prefix does. (Reading the counts: keep the IndexedDataset referenced while
#   reading, its __del__ unmaps the .idx buffer that sequence_lengths points into.)
# Removable when upstream sizes an unweighted blend to the samples requested.
#   Canary: test_upstream_still_blends_unweighted_prefixes_one_epoch_each.
# ---------------------------------------------------------------------------------------------------

def _num_tokens(prefix: str) -> float:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    # Keep the dataset referenced while reading: its __del__ unmaps the .idx
    # buffer that sequence_lengths points into (a temporary would segfault).
    dataset = IndexedDataset(prefix)
    total = float(dataset.sequence_lengths.sum())
    del dataset
    return total


def token_count_weights(prefixes: Sequence[str]) -> list[float]:
    """Blend weights for unweighted prefixes: each one's token count."""
    return [_num_tokens(p) for p in prefixes]
