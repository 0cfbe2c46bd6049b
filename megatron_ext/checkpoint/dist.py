"""Save and load training state with megatron-core's dist_checkpointing (torch_dist format).

A save writes into ITER.tmp and renames it to ITER only when every rank has finished, then
updates latest_checkpointed_iteration.txt (also by rename): a crash mid-save leaves the previous
checkpoint as the latest. Tensors are keyed by their global (unsharded) identity, so a checkpoint
saved at one TP/PP/DP layout loads at another. Loading reads with torch.load's weights_only=True.
The megatron-core 0.16.1 workarounds the save and load need (optimizer-state format and allocation,
Adam's step, the writer's results queue) live in megatron_ext/megatron_compat.py.
"""

from __future__ import annotations

import os
import shutil

import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

from megatron_ext import megatron_compat
from megatron_ext.checkpoint.integrity import IntegrityError, verify_checksums, write_checksums
from megatron_ext.checkpoint.paths import (LATEST_FILE, CheckpointError, existing_iteration_dir,
                                           has_checkpoint, iteration_dir, read_latest_iteration, write_text_atomic)
from megatron_ext.checkpoint.rng import capture_rng_state, restore_rng_state
from megatron_ext.models.identity import CHECKPOINT_KEY, ModelIdentity

LAYOUT_KEYS = ("tensor_model_parallel_size", "pipeline_model_parallel_size",
               "virtual_pipeline_model_parallel_size", "data_parallel_size")


def _layout_tag() -> tuple:
    return (parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_tensor_model_parallel_world_size())


def _rng_object(rng_state) -> ShardedObject:
    pp, tp = _layout_tag()
    return ShardedObject("rng_state", rng_state, (pp, tp),
                         (parallel_state.get_pipeline_model_parallel_rank(),
                          parallel_state.get_tensor_model_parallel_rank()),
                         replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True))


def _sharded_state(model, optimizer, scheduler, *, is_loading: bool, with_optimizer: bool, with_rng: bool):
    state = {f"model{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(model)}
    if with_optimizer and is_loading:
        megatron_compat.allocate_distributed_optimizer_state(optimizer)
    if with_optimizer:
        state["optimizer"] = optimizer.sharded_state_dict(dict(state), is_loading=is_loading,
                                                          metadata=megatron_compat.OPTIM_METADATA)
        state["opt_param_scheduler"] = scheduler.state_dict()
    if with_rng:
        state["rng_state"] = _rng_object(capture_rng_state())
    return state


def finish_param_sync(model) -> None:
    """With --overlap-param-gather the all-gather of the parameters updated by the last step only
    completes in the next forward; a save before it would write the other ranks' stale shards.
    Force it now (as Megatron-LM does before saving); the next forward then has nothing to wait for."""
    for chunk in model:
        if getattr(chunk, "use_forward_hook", False):
            chunk.start_param_sync(force_sync=True)


def save_checkpoint(root: str, model, optimizer, scheduler, train_state, run, provenance: dict | None = None) -> str:
    """run: the RunConfig (its flags and model identity are recorded in common.pt); provenance: what the
    loaded checkpoint recorded about its Hugging Face source (carried on for the export)."""
    finish_param_sync(model)
    megatron_compat.start_write_results_queue()
    final = iteration_dir(root, train_state.iteration)
    tmp = final + ".tmp"
    if dist.get_rank() == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
        os.makedirs(tmp)
    dist.barrier()
    state = _sharded_state(model, optimizer, scheduler, is_loading=False, with_optimizer=True, with_rng=True)
    state.update(iteration=train_state.iteration, consumed_samples=train_state.consumed_samples,
                 args={**saved_args(run.flags), **(provenance or {})}, checkpoint_version=1,
                 **{CHECKPOINT_KEY: run.model.to_checkpoint()})
    try:
        dist_checkpointing.save(state, tmp)
        write_checksums(tmp)
    except (Exception, CheckpointException) as exc:  # a full disk, a quota, an I/O error on any rank
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(root).free / 2**30
        raise CheckpointError(f"cannot save iteration {train_state.iteration} to {final}: {_cause(exc)}. The "
                              f"partial files were removed and the previous checkpoint is still the latest "
                              f"({free:.1f} GiB free there); free space or pass another --save, then resume "
                              "with --load") from exc
    dist.barrier()
    if dist.get_rank() == 0:
        if os.path.exists(final):  # re-saving an iteration (a restarted run): swap, never half-replace
            shutil.rmtree(final + ".old", ignore_errors=True)
            os.replace(final, final + ".old")  # a crash from here to the next rename: loads read .old
        os.replace(tmp, final)
        write_text_atomic(os.path.join(root, LATEST_FILE), str(train_state.iteration))
        shutil.rmtree(final + ".old", ignore_errors=True)
    dist.barrier()
    return final


def _cause(exc: BaseException) -> str:
    if isinstance(exc, CheckpointException):  # failures: rank -> (exception, traceback frames)
        if not exc.failures:
            return "another rank failed (its message says why)"
        exc = next(iter(exc.failures.values()))[0]
    return f"{type(exc).__name__}({exc})"


def saved_args(flags) -> dict:
    """The run's flags, as plain values (weights_only-loadable; the model identity is stored on its own)."""
    plain = (str, int, float, bool, type(None))
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in vars(flags).items()
            if isinstance(v, plain) or (isinstance(v, (list, tuple)) and all(isinstance(x, plain) for x in v))}


def read_checkpoint_args(root: str, iteration: int | None = None) -> tuple[int, dict]:
    iteration = read_latest_iteration(root) if iteration is None else iteration
    path = existing_iteration_dir(root, iteration)
    try:
        common = dist_checkpointing.load_common_state_dict(path)
    except Exception as exc:  # missing or truncated common.pt
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}. The files may be truncated or "
                              "incomplete; load an earlier iteration (edit latest_checkpointed_iteration.txt)") from exc
    return iteration, common


def model_difference(common: dict, identity: ModelIdentity) -> str | None:
    """The first shape-fixing field on which a checkpoint's model and this run's disagree."""
    for field, saved, ours in ModelIdentity.from_checkpoint(common).shape_differences(identity):
        return f"{field}={saved!r} but this run has {ours!r}"
    return None


def check_compatible(common: dict, identity: ModelIdentity, path: str) -> None:
    difference = model_difference(common, identity)
    if difference:
        hint = (" (the tokenizer's vocabulary does not match the checkpoint's: use the tokenizer the checkpoint "
                "was trained with; if it is that tokenizer and the model has more embedding rows than it has ids, "
                "pass --vocab-pad-to with the checkpoint's rows)" if difference.startswith("padded_vocab_size") else "")
        raise CheckpointError(f"checkpoint {path} has {difference}{hint}")


def check_save_target(root: str, run) -> None:
    """Refuse to mix another model's checkpoints into --save (unless --overwrite): its latest iteration
    must have this run's shapes. Resuming (--load ROOT) is checked the same way when it loads."""
    load = run.checkpoint.load
    resuming_it = load and os.path.realpath(load) == os.path.realpath(root)
    if run.checkpoint.overwrite or resuming_it or not has_checkpoint(root):
        return
    _, common = read_checkpoint_args(root)
    difference = model_difference(common, run.model)
    if difference:
        raise CheckpointError(f"--save {root} holds a checkpoint of a different model (its {difference}); "
                              "saving there would replace it. Pass another --save, or --overwrite to replace it")


def load_checkpoint(root: str, model, optimizer, scheduler, run):
    """Restore into built model/optimizer/scheduler (RunConfig `run`: its checkpoint flags, layout and model);
    returns (iteration, consumed_samples)."""
    iteration, common = read_checkpoint_args(root)
    path = existing_iteration_dir(root, iteration)
    saved, flags = common.get("args", {}), run.checkpoint
    check_compatible(common, run.model, path)
    # --finetune, or a checkpoint with weights only (as tools/convert_from_hf.py writes).
    weights_only = flags.finetune or "opt_param_scheduler" not in common
    same_layout = all(saved.get(k) == getattr(run.parallel, k) for k in LAYOUT_KEYS)
    with_rng = same_layout and not flags.no_load_rng and not weights_only
    with_optimizer = not (weights_only or flags.no_load_optim)
    if not flags.no_verify_checkpoint:
        try:
            verified = verify_checksums(path)
        except IntegrityError as exc:
            raise CheckpointError(f"{exc}; --no-verify-checkpoint skips this check") from None
        if not verified and dist.get_rank() == 0:
            print(f" > {path} has no checksums (written before they were added): not verified", flush=True)
    state = _sharded_state(model, optimizer, scheduler, is_loading=True, with_optimizer=with_optimizer,
                           with_rng=with_rng)
    try:
        loaded = dist_checkpointing.load(state, path)
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"cannot load checkpoint {path}: {_cause(exc)}. A shard may be "
                              "truncated or missing: load an earlier iteration (edit "
                              f"{LATEST_FILE}) or re-copy the checkpoint") from exc
    for i, chunk in enumerate(model):
        chunk.module.load_state_dict(loaded[f"model{i}"], strict=True)
    if with_optimizer:
        with megatron_compat.distributed_optimizer_step_fix(optimizer):
            optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    else:
        # bf16/fp16 train an fp32 main copy inside the optimizer; built before the load, it still holds
        # the random initialisation, which the first step would copy back over the loaded weights.
        optimizer.reload_model_params()
    if with_rng:
        restore_rng_state(loaded["rng_state"].data if hasattr(loaded["rng_state"], "data") else loaded["rng_state"])
    iteration, consumed = (0, 0) if flags.finetune else (common.get("iteration", 0), common.get("consumed_samples", 0))
    if dist.get_rank() == 0:
        print(describe_load(path, common.get("iteration", 0), consumed, flags, weights_only=weights_only,
                            with_optimizer=with_optimizer, with_rng=with_rng), flush=True)
    return iteration, consumed


def load_model_weights(root: str, iteration: int | None, modules: list, run) -> tuple[dict, str]:
    """Only the model's tensors of ROOT's ITERATION (None: the latest) into `modules` (unwrapped chunks, any
    layout: dist_checkpointing reshards), checked as a resume is (model identity, checksums): what evaluation
    and generation load. Returns (the iteration's common.pt, its directory)."""
    iteration, common = read_checkpoint_args(root, iteration)
    path = existing_iteration_dir(root, iteration)
    check_compatible(common, run.model, path)
    if not run.checkpoint.no_verify_checkpoint:
        try:
            verify_checksums(path)
        except IntegrityError as exc:
            raise CheckpointError(f"{exc}; --no-verify-checkpoint skips this check") from None
    state = {f"model{i}": module.sharded_state_dict() for i, module in enumerate(modules)}
    try:
        loaded = dist_checkpointing.load(state, path)
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"cannot load checkpoint {path}: {_cause(exc)}. A shard may be truncated or "
                              "missing: load another iteration, or re-copy the checkpoint") from exc
    for i, module in enumerate(modules):
        module.load_state_dict(loaded[f"model{i}"], strict=True)
    return common, path


def describe_load(path: str, saved_iteration: int, consumed: int, flags, *, weights_only: bool,
                  with_optimizer: bool, with_rng: bool) -> str:
    """The one line saying what a load restored (flags: the CheckpointConfig): from where, which iteration,
    which parts."""
    loaded, skipped = ["weights"], []
    reason_optim = ("--finetune" if flags.finetune else "the checkpoint has weights only" if weights_only
                    else "--no-load-optim")
    (loaded if with_optimizer else skipped).append(
        "optimizer and LR schedule" if with_optimizer else f"optimizer and LR schedule ({reason_optim})")
    if with_rng:
        loaded.append("RNG")
    else:
        why = ("--no-load-rng" if flags.no_load_rng else reason_optim if weights_only
               else "saved at another TP/PP layout")
        skipped.append(f"RNG ({why})")
    if flags.finetune:
        skipped.append("data position (--finetune: restarts at iteration 0)")
    else:
        loaded.append(f"data position ({consumed} consumed samples)")
    line = f" > loaded checkpoint {path} (iteration {saved_iteration}): {', '.join(loaded)}"
    return line + (f"; not loaded: {', '.join(skipped)}" if skipped else "")
