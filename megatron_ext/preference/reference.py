"""The reference model's log-probabilities: one forward pass of the starting weights over every pair, before
training, stored beside the checkpoints.

Why a pass and not a second frozen model: DPO's reference is the policy's starting weights, frozen, and
all the loss needs from it is two numbers per pair (the chosen and the rejected reply's log-probability
sums). Computing them once costs one forward pass over the data (about a third of one training epoch's
compute) and 16 bytes a pair, where a second model in the same TP/PP layout would hold a second copy of the
weights on every GPU (7B in bf16: 14 GB more per model replica) and run a second forward every step (a third
more compute per step, for every epoch). The cost of the pass: the reference is fixed when the run starts,
so a change of data needs a new pass (the file records the data it was computed on and is refused for
other data), and it cannot follow a schedule that updates the reference (TR-DPO); neither is part of the
AmberSafe recipe.

The pass runs megatron-core's pipeline schedule forward-only, with the DPO step's own log-prob code
(preference/step.py), over the rows of the first epoch of each source: together they hold each pair of the
split exactly once. Data-parallel ranks take every D-th row; the sums are collected on the last pipeline
stage, then summed over the data-parallel and pipeline groups (each pair is filled by exactly one rank; a
count checks it), so every rank ends with the whole table. The table is saved (atomically) as
``{--save}/dpo_reference_logps.npz`` and loaded from ``--load`` when the run resumes: after step 0 the
model no longer holds the reference weights, so a resumed run without the file stops with an error.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from megatron_ext.preference.step import pair_logps, token_logps

FILENAME = "dpo_reference_logps.npz"


def _collate(samples: list[dict]) -> dict:
    return {key: torch.as_tensor(np.stack([s[key] for s in samples])) for key in samples[0]}


def _reference_loss_func(config, true_vocab_size, batch, logits):
    sums, _ = pair_logps(token_logps(logits, batch["labels"], config, true_vocab_size), batch["loss_mask"],
                         batch["position_ids"], batch["pair_ids"].shape[1])
    ids = batch["pair_ids"].reshape(-1, 1).double()
    table = torch.cat([ids, sums.reshape(-1, 2)], dim=1)      # [b * slots, 3]: pair id, chosen, rejected
    zero = logits.sum() * 0.0
    return zero, torch.ones((), dtype=torch.int, device=logits.device), {"reference": table.detach()}


def _forward_step(data_iterator, model):
    from functools import partial

    from megatron_ext.training.step import packed_seq_params

    unwrapped = model.module
    device = next(unwrapped.parameters()).device
    batch = {key: value.to(device) for key, value in next(data_iterator).items()
             if key in ("tokens", "labels", "loss_mask", "position_ids", "pair_ids")}
    output = model(batch["tokens"], batch["position_ids"], None,
                   packed_seq_params=packed_seq_params(batch["position_ids"]))
    return output, partial(_reference_loss_func, unwrapped.config, unwrapped.true_vocab_size, batch)


def compute_reference(model: list, dataset, training) -> np.ndarray:
    """[pairs, 2] float64 (chosen, rejected) log-probability sums of every pair of `dataset`'s split under
    `model` as it is now (call before the first step; NaN for pairs outside the split). Collective."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_ext.training.parallel import data_parallel_rank_and_size

    dp_rank, dp_size = data_parallel_rank_and_size()
    all_rows = dataset.rows_for_pairs()
    expected = np.zeros(dataset.num_pairs, dtype=bool)   # this split's pairs that fit a row
    for source, pairs in all_rows:
        expected[dataset.offsets[source] + pairs] = True
    rows = all_rows[dp_rank::dp_size]
    mbs = training.micro_batch_size
    # The same number of micro-batches on every data-parallel rank (the last padded with empty rows), so
    # collectives a forward may hold (parameter gathers of the distributed optimizer) stay matched.
    num_microbatches = -(-len(all_rows) // (mbs * dp_size))
    device = next(model[0].parameters()).device
    table = torch.zeros(dataset.num_pairs, 3, dtype=torch.float64, device=device)   # chosen, rejected, count
    if num_microbatches:
        empty = (all_rows[0][0], np.zeros(0, dtype=np.int64))
        rows = rows + [empty] * (num_microbatches * mbs - len(rows))

        def batches():
            for i in range(num_microbatches):
                yield _collate([dataset.build(source, pairs) for source, pairs in rows[i * mbs:(i + 1) * mbs]])

        for chunk in model:
            chunk.eval()
        with torch.no_grad():
            outputs = get_forward_backward_func()(
                forward_step_func=_forward_step,
                data_iterator=[batches() for _ in model] if len(model) > 1 else batches(),
                model=model if len(model) > 1 else model[0], num_microbatches=num_microbatches,
                seq_length=training.seq_length, micro_batch_size=mbs, forward_only=True)
        for chunk in model:
            chunk.train()
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            found = torch.cat([entry["reference"] for entry in outputs]).to(device)
            found = found[found[:, 0] >= 0]
            ids = found[:, 0].long()
            table[ids, :2] = found[:, 1:]
            table[ids, 2] = 1.0
    dist.all_reduce(table, group=parallel_state.get_data_parallel_group())
    dist.all_reduce(table, group=parallel_state.get_pipeline_model_parallel_group())
    counts = table[:, 2].cpu().numpy()
    wrong = int((counts != expected).sum())
    if wrong:
        raise RuntimeError(f"reference pass: {wrong} of {int(expected.sum())} pairs were not computed exactly once "
                           "(a data-parallel split bug)")
    values = table[:, :2].cpu().numpy()
    values[~expected] = np.nan   # other splits' pairs and pairs longer than a row: never in a batch
    return values


def fingerprint(dataset) -> dict:
    """What the table was computed on: a table is only reused for the same pairs in the same order."""
    return {"sources": [p.source.prefix for p in dataset.packed],
            "pairs": [int(len(p.source)) for p in dataset.packed],
            "units": [[int(p.units[0]), int(p.units[-1]) + 1] if len(p.units) else [0, 0] for p in dataset.packed],
            "sequence_tokens": [int(p.source.sequence_lengths.sum()) for p in dataset.packed]}


def save_reference(directory: str, tables: dict, datasets: dict) -> str:
    path = os.path.join(directory, FILENAME)
    os.makedirs(directory, exist_ok=True)
    meta = {name: fingerprint(datasets[name]) for name in tables}
    tmp = path + f".tmp-{os.getpid()}.npz"
    np.savez(tmp, meta=np.asarray(json.dumps(meta)), **tables)
    os.replace(tmp, path)
    return path


def load_reference(directory: str, datasets: dict) -> dict | None:
    """{split: table} from `directory`, or None if there is no file. A file for other data is an error."""
    path = os.path.join(directory, FILENAME)
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        tables = {name: f[name] for name in datasets if name in f.files}
    for name, dataset in datasets.items():
        if name not in tables or meta.get(name) != fingerprint(dataset):
            raise SystemExit(f"error: {path} holds reference log-probs for other data ({name}: "
                             f"{meta.get(name)} vs this run's {fingerprint(dataset)}); DPO's reference must be "
                             "the starting weights on this data: start the run again from its starting checkpoint "
                             "in a new --save directory")
    return tables


def attach_reference(run) -> None:
    """Fill the preference datasets' reference tables: loaded from --load when the run resumes, otherwise
    computed now from the starting weights and saved to --save. Collective."""
    from megatron_ext.training.parallel import is_last_rank

    # data/datasets.py wraps datasets in a token-id check: the table belongs to the PreferenceDataset inside.
    datasets = {name: getattr(ds, "dataset", ds) for name, ds in (("train", run.train_dataset),
                                                                   ("valid", run.valid_dataset)) if ds is not None}
    load, save = run.config.checkpoint.load, run.config.checkpoint.save
    tables = load_reference(load, datasets) if load else None
    if tables is None:
        if run.state.iteration > 0:
            raise SystemExit(f"error: resuming DPO at iteration {run.state.iteration} from {load}, but {load}/"
                             f"{FILENAME} (the reference log-probs of the starting weights) is missing; the "
                             "weights now are not the reference: start again from the starting checkpoint")
        tables = {name: compute_reference(run.model, ds, run.config.training) for name, ds in datasets.items()}
        if save and is_last_rank():
            path = save_reference(save, tables, datasets)
            pairs = sum(int(np.isfinite(t[:, 0]).sum()) for t in tables.values())
            print(f" > DPO reference log-probs of {pairs} pairs saved to {path}",
                  flush=True)
    elif is_last_rank():
        print(f" > DPO reference log-probs loaded from {os.path.join(load, FILENAME)}", flush=True)
    for name, ds in datasets.items():
        ds.reference = tables[name]
