"""Canaries for megatron_ext/megatron_compat.py: each test runs megatron-core WITHOUT the project's
workaround and asserts that upstream still behaves the way the workaround exists for. After a
megatron-core upgrade a failing `test_upstream_still_<behaviour>` names the workaround that can go
(its docstring says which); a passing one says the workaround is still needed.

The distributed-optimizer, checkpoint-writer and blend-cache probes need a process group, CUDA
redirected to the CPU (megatron_ext.platform) and a fresh interpreter (the results queue is a
process-wide singleton), so they run together in one subprocess (this file run as a script) whose
results the tests read. The scheduler, empty-split and unweighted-blend probes run in this process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import traceback

import numpy
import pytest
import torch

VOCAB = 100
SEQ = 16


# ------------------------------------------------------------------------------------------------
# Data written with megatron-core's own writer, datasets built with its own builder
# ------------------------------------------------------------------------------------------------

def _write_prefix(directory: str, name: str, num_docs: int, seed: int) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = numpy.random.default_rng(seed)
    prefix = os.path.join(directory, name)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    for _ in range(num_docs):
        doc = rng.integers(0, VOCAB - 1, size=int(rng.integers(30, 60))).tolist() + [VOCAB - 1]
        builder.add_document(torch.tensor(doc, dtype=torch.int32), [len(doc)])
    builder.finalize(prefix + ".idx")
    return prefix


def _gpt_config(prefixes, weights, split: str, cache: str | None):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    from megatron_ext.data.tokenizers import build_tokenizer

    return GPTDatasetConfig(random_seed=1, sequence_length=SEQ, blend=(list(prefixes), weights), split=split,
                            path_to_cache=cache, tokenizer=build_tokenizer("NullTokenizer", None, vocab_size=VOCAB),
                            reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
                            create_attention_mask=False)


def _build(config, sizes):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    return BlendedMegatronDatasetBuilder(GPTDataset, list(sizes), lambda: True, config).build()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("compat_data")
    _write_prefix(str(directory), "a", 30, seed=1)
    _write_prefix(str(directory), "b", 20, seed=2)
    _write_prefix(str(directory), "five", 5, seed=3)
    return str(directory)


# ------------------------------------------------------------------------------------------------
# The subprocess probes
# ------------------------------------------------------------------------------------------------

def _outcome(fn) -> dict:
    """{"ok": value} or {"error": exception type name, "message": ...}."""
    try:
        return {"ok": fn()}
    except BaseException as exc:  # noqa: BLE001 - CheckpointException is a BaseException
        return {"error": type(exc).__name__, "message": str(exc)[:500], "repr": repr(exc)[:200],
                "traceback": traceback.format_exc()[-2000:]}


def _probe_blend_cache_without_process_group(data: str, tmp: str):
    config = _gpt_config([os.path.join(data, "a"), os.path.join(data, "b")], [0.5, 0.5], "100,0,0",
                         cache=os.path.join(tmp, "blend_cache"))
    train, _, _ = _build(config, (20, 0, 0))
    return len(train)


def _probe_results_queue_manager():
    """Start upstream's results queue; SIGTERM the Manager process it started; its exit code."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    before = {p.pid for p in multiprocessing.active_children()}
    queue = filesystem_async._get_write_results_queue()
    started = [p for p in multiprocessing.active_children() if p.pid not in before]
    assert len(started) == 1, f"expected one Manager process, found {started}"
    manager = started[0]
    os.kill(manager.pid, signal.SIGTERM)
    manager.join(timeout=5)
    exitcode = manager.exitcode
    if exitcode is None:  # it ignored SIGTERM: upstream fixed it
        manager.kill()
        manager.join()
    del queue
    filesystem_async._results_queue = None
    return exitcode


def _distributed_optimizer():
    """A one-layer GPTModel in megatron's DDP with the distributed optimizer (torch Adam, no apex/TE);
    returns (DDP chunk, the DistributedOptimizer inside megatron's ChainedOptimizer)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2, use_cpu_initialization=True)
    gpt = GPTModel(config=config, transformer_layer_spec=get_gpt_layer_local_spec(), vocab_size=32,
                   max_sequence_length=8)
    ddp = DistributedDataParallel(config=config, ddp_config=DistributedDataParallelConfig(
        use_distributed_optimizer=True, grad_reduce_in_fp32=True), module=gpt)
    optimizer = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, use_distributed_optimizer=True),
                                       [ddp])
    inner = [o for o in getattr(optimizer, "chained_optimizers", [optimizer]) if isinstance(o, DistributedOptimizer)]
    assert len(inner) == 1, optimizer
    return ddp, inner[0]


def _probes_with_process_group(tmp: str) -> dict:
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_ext.platform import enable_cpu_redirection, free_port

    # The platform layer (listed in megatron_compat's docstring), not a workaround under test here.
    enable_cpu_redirection()
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                         world_size=1)
    parallel_state.initialize_model_parallel()
    model_parallel_cuda_manual_seed(1)
    reshardable = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}
    ddp, optimizer = _distributed_optimizer()
    model_state = ddp.module.sharded_state_dict()
    results = {
        "fresh_load_description": _outcome(
            lambda: optimizer.sharded_state_dict(model_state, is_loading=True, metadata=reshardable) and None),
    }
    optimizer._init_optimizer_states_with_dummy_values()  # Adam state, step 1
    results["default_format"] = _outcome(
        lambda: optimizer.sharded_state_dict(model_state, is_loading=False)["param_state_sharding_type"])

    path = os.path.join(tmp, "optimizer_checkpoint")
    os.makedirs(path)
    dist_checkpointing.save({"optimizer": optimizer.sharded_state_dict(model_state, metadata=reshardable)}, path)

    def load():
        return dist_checkpointing.load(
            {"optimizer": optimizer.sharded_state_dict(model_state, is_loading=True, metadata=reshardable)},
            path)["optimizer"]

    loaded = load()
    results["load_without_step_fix"] = _outcome(lambda: optimizer.load_state_dict(loaded) and None)

    def step_tensors_after_load():
        # Only part (a) of the fix applied: read the step tensors before its part (b) copies them.
        from megatron_ext.megatron_compat import distributed_optimizer_step_fix

        state = load()
        with distributed_optimizer_step_fix(optimizer):
            optimizer.load_state_dict(state)
            steps = [s["step"] for s in optimizer.optimizer.state.values()]
            return {"params": len(steps), "distinct_step_tensors": len({id(s) for s in steps})}

    results["step_tensors"] = _outcome(step_tensors_after_load)
    return results


def _run_probes(data: str, tmp: str, out: str) -> None:
    results = {"blend_cache": _outcome(lambda: _probe_blend_cache_without_process_group(data, tmp)),
               "results_queue_manager": _outcome(_probe_results_queue_manager)}
    results.update(_probes_with_process_group(tmp))
    with open(out, "w") as f:
        json.dump(results, f)


@pytest.fixture(scope="module")
def upstream(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compat_probes")
    out = tmp / "results.json"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), data_dir, str(tmp), str(out)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"the upstream probes failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return json.loads(out.read_text())


def _error(outcome: dict) -> str:
    assert "error" in outcome, f"upstream no longer fails here; it returned {outcome.get('ok')!r}"
    return outcome["error"]


# ------------------------------------------------------------------------------------------------
# 1-4: distributed optimizer checkpoints and the torch_dist writer
# ------------------------------------------------------------------------------------------------

def test_upstream_still_defaults_to_fully_sharded_model_space(upstream):
    """When this fails, megatron-core's DistributedOptimizer.sharded_state_dict() without metadata no
    longer picks the broken 'fully_sharded_model_space' format (it raised 'flattened_range is not
    supported'): OPTIM_METADATA in megatron_compat.py (1) may then rest on upstream's default; keep
    'fully_reshardable' explicit unless the new default also reshards across TP, PP and DP."""
    outcome = upstream["default_format"]
    assert _error(outcome) == "CheckpointingException", outcome
    assert "flattened_range" in outcome["message"], outcome


def test_upstream_still_needs_allocated_state_to_load(upstream):
    """When this fails, megatron-core fixed sharded_state_dict(is_loading=True) on a distributed
    optimizer that has no Adam state yet (it asserted in state_dict()): remove
    allocate_distributed_optimizer_state (2) from megatron_compat.py and its call in checkpoint/dist.py."""
    outcome = upstream["fresh_load_description"]
    assert _error(outcome) == "AssertionError", outcome
    assert "state_dict" in outcome["traceback"], outcome


def test_upstream_still_raises_keyerror_step_on_fully_reshardable_load(upstream):
    """When this fails, megatron-core fixed loading fully_reshardable distributed-optimizer state into
    torch's Adam (it raised KeyError 'step'): remove part (a) of distributed_optimizer_step_fix (3),
    the _set_main_param_and_optimizer_states patch, from megatron_compat.py."""
    outcome = upstream["load_without_step_fix"]
    assert _error(outcome) == "KeyError" and "step" in outcome["message"], outcome


def test_upstream_still_shares_one_step_tensor(upstream):
    """When this fails, megatron-core's DistributedOptimizer.load_state_dict gives each parameter its
    own Adam 'step' tensor (it gave all of them one, which torch's foreach Adam increments once per
    parameter): remove part (b) of distributed_optimizer_step_fix (3), the per-parameter clone, from
    megatron_compat.py (and the whole fix with part (a))."""
    outcome = upstream["step_tensors"]
    assert "ok" in outcome, outcome
    assert outcome["ok"]["params"] > 1 and outcome["ok"]["distinct_step_tensors"] == 1, outcome


def test_upstream_still_starts_a_results_manager_that_dies_on_sigterm(upstream):
    """When this fails, megatron-core's filesystem_async._get_write_results_queue no longer starts a
    multiprocessing Manager that SIGTERM kills (Slurm's SIGTERM then broke the save on the way out):
    remove start_write_results_queue (4) from megatron_compat.py and its call in checkpoint/dist.py."""
    outcome = upstream["results_queue_manager"]
    assert outcome.get("ok") == -signal.SIGTERM, outcome


# ------------------------------------------------------------------------------------------------
# 5-7: datasets
# ------------------------------------------------------------------------------------------------

def test_upstream_still_needs_a_process_group_to_cache_a_blend(upstream):
    """When this fails, megatron-core's BlendedDataset builds its index cache in a process without a
    process group (it called torch.distributed.get_rank() and raised): remove
    single_process_group_if_needed (6) from megatron_compat.py and its use in data/datasets.py."""
    outcome = upstream["blend_cache"]
    _error(outcome)
    assert "process group" in outcome["message"].lower(), outcome


class _Looping(Exception):
    pass


def _bounded(fn, max_lines: int = 200_000):
    """fn() with megatron-core's dataset code traced: raises _Looping (naming the function it was in)
    once that code has run max_lines lines, so a loop that never ends is caught, not waited for."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
            if count > max_lines:
                raise _Looping(frame.f_code.co_name)
        return local

    def calls(frame, event, arg):
        return local if "megatron/core/datasets" in frame.f_code.co_filename.replace(os.sep, "/") else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        return fn()
    finally:
        sys.settrace(previous)


def test_upstream_still_loops_on_a_split_with_no_documents(data_dir, tmp_path):
    """When this fails, megatron-core no longer loops forever building a GPTDataset for a split that
    gets no documents (5 documents, split 98,2,0: the validation split gets none; GPTDataset's
    _get_num_epochs added zero tokens per epoch forever): remove drop_empty_splits (5) from
    megatron_compat.py and its call in data/datasets.py, if upstream now refuses or skips the split."""
    config = _gpt_config([os.path.join(data_dir, "five")], None, "98,2,0", cache=str(tmp_path / "cache"))
    with pytest.raises(_Looping) as looping:
        _bounded(lambda: _build(config, (10, 1, 0)))
    assert str(looping.value) == "_get_num_epochs"


def test_upstream_still_blends_unweighted_prefixes_one_epoch_each(data_dir):
    """When this fails, megatron-core sizes a blend without weights to the samples requested (it built
    one epoch of each dataset, fewer samples than asked for): remove token_count_weights (7) from
    megatron_compat.py and its call in data/datasets.py, if upstream's blend is also by size."""
    prefixes = [os.path.join(data_dir, "a"), os.path.join(data_dir, "b")]
    # No cache directory: caching a blend needs a process group (workaround 6).
    train, _, _ = _build(_gpt_config(prefixes, None, "100,0,0", cache=None), (400, 0, 0))
    one_epoch = sum(len(dataset) for dataset in train.datasets)
    assert len(train) == one_epoch < 400


# ------------------------------------------------------------------------------------------------
# 8: the LR scheduler and μP's per-group multipliers (mup/optimizer.py)
# ------------------------------------------------------------------------------------------------

def test_upstream_still_ignores_lr_mult():
    """When this fails, megatron-core's OptimizerParamScheduler multiplies a group's lr by its lr_mult
    again: remove the max_lr/min_lr override from mup/optimizer.py's _signature_override (listed as (8)
    in megatron_compat.py); left in, every μP group's multiplier would be applied twice."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    plain, scaled = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([{"params": [plain]}, {"params": [scaled], "lr_mult": 0.25}], lr=1.0)
    scheduler = OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=0.01, min_lr=0.001, lr_warmup_steps=4,
                                        lr_decay_steps=20, lr_decay_style="cosine", start_wd=0.0, end_wd=0.0,
                                        wd_incr_steps=20, wd_incr_style="constant")
    for _ in range(6):
        scheduler.step(1)
    plain_lr, scaled_lr = (group["lr"] for group in optimizer.param_groups)
    assert 0.001 < plain_lr < 0.01
    assert scaled_lr == plain_lr


if __name__ == "__main__":  # the subprocess of the `upstream` fixture: DATA_DIR TMP_DIR OUT_JSON
    _run_probes(*sys.argv[1:4])
