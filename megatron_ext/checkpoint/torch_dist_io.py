"""This project's torch_dist checkpoints as the converters read and write them, one group of tensors at
a time (peak memory about one layer, never the model).

torch_dist checkpoints are torch.distributed.checkpoint (DCP) directories plus megatron-core's
metadata.json and common.pt. Tensors are keyed by their global ShardedTensor key: per-layer
parameters are stacked along a leading layer axis (`decoder.layers.mlp.linear_fc1.weight`, global
shape [num_layers, 2F, H]) and each layer is one chunk, exactly as a TP1/PP1 run of pretrain_llama.py
saves them. Loading at any TP/PP layout reads the overlaps of its own shards with these chunks.

Writing: DCP's FileSystemWriter asks the planner for each item's data (`resolve_data`) just before
writing it, so the planner below computes a group's tensors on first request and drops them once
written. Two details keep that streaming: the plan is built from shapes alone (no tensor exists
before it is written), and every item goes to its own file (`single_file_per_rank=False`), because
torch keeps a reference to every tensor of a file until the file is closed.

Reading: a load planner asks DCP for one layer's slice of each stacked tensor, so only that slice is
read from disk.
"""

from __future__ import annotations

import io
import os
import re

import torch
from torch.distributed import checkpoint as dcp
from torch.distributed.checkpoint import (CheckpointException, DefaultSavePlanner, FileSystemReader,
                                          FileSystemWriter, LoadPlan, LoadPlanner, SavePlan)
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, MetadataIndex, TensorProperties,
                                                   TensorStorageMetadata)
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megatron_ext.checkpoint.hf_arch import ConversionError, Group, expect_shape
from megatron_ext.checkpoint.paths import LATEST_FILE, iteration_dir, read_latest_iteration

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


# ---- Megatron names <-> torch_dist keys ---------------------------------------------------------

def dcp_location(name: str, shape: tuple, num_layers: int) -> tuple[str, tuple, tuple]:
    """(key, global shape, chunk offsets) of a Megatron tensor in a torch_dist checkpoint."""
    match = _LAYER.match(name)
    if match is None:
        return name, tuple(shape), (0,) * len(shape)
    layer, rest = int(match.group(1)), match.group(2)
    return f"decoder.layers.{rest}", (num_layers, *shape), (layer,) + (0,) * len(shape)


# ---- writing a torch_dist checkpoint -------------------------------------------------------------

class _StreamingSavePlanner(DefaultSavePlanner):
    """Plans from precomputed write items; resolve_data produces each tensor on demand."""

    def __init__(self, items: list, resolve):
        super().__init__()
        self._items, self._resolve = items, resolve

    def create_local_plan(self) -> SavePlan:
        self.plan = SavePlan(self._items, planner_data={})  # no nested state dict to unflatten
        return self.plan

    def resolve_data(self, write_item):
        return self._resolve(write_item)


class TorchDistWriter:
    """Writes one iteration directory of a torch_dist checkpoint from groups produced lazily."""

    def __init__(self, directory: str):
        self.directory = directory

    def save(self, groups: list[Group], produce, dtype: torch.dtype, num_layers: int, common: dict,
             extra_state_keys: tuple[str, ...]) -> None:
        """produce(group) -> {Megatron name: tensor} for exactly group.shapes (checked). extra_state_keys: the
        (empty) `_extra_state` objects a loading model asks for (model_tensors.py: the model's ShardedObjects)."""
        items, source = [], {}
        for group in groups:
            for name, shape in group.shapes.items():
                key, global_shape, offsets = dcp_location(name, shape, num_layers)
                chunk_sizes = (1, *shape) if len(global_shape) > len(shape) else tuple(shape)
                index = MetadataIndex(key, torch.Size(offsets))
                items.append(WriteItem(index=index, type=WriteItemType.SHARD, tensor_data=TensorWriteData(
                    chunk=ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(chunk_sizes)),
                    properties=TensorProperties(dtype=dtype), size=torch.Size(global_shape))))
                source[index] = (group, name)
        empty_state = io.BytesIO()
        torch.save([None], empty_state)  # what megatron-core stores for an empty _extra_state
        objects = {key: empty_state.getvalue() for key in extra_state_keys}
        items += [WriteItem(index=MetadataIndex(key), type=WriteItemType.BYTE_IO) for key in objects]

        cache: dict = {}  # group name -> its not-yet-written tensors (one group at a time in practice)

        def resolve(item):
            if item.type == WriteItemType.BYTE_IO:
                return io.BytesIO(objects[item.index.fqn])
            group, name = source[item.index]
            if group.name not in cache:
                cache[group.name] = self._checked(group, produce(group), dtype)
            tensors = cache[group.name]
            tensor = tensors.pop(name)
            if not tensors:
                del cache[group.name]
            return tensor.unsqueeze(0) if group.layer is not None else tensor

        os.makedirs(self.directory, exist_ok=True)
        writer = FileSystemWriter(self.directory, single_file_per_rank=False, thread_count=1)
        dcp.save({}, storage_writer=writer, planner=_StreamingSavePlanner(items, resolve), no_dist=True)
        if cache:
            raise RuntimeError(f"tensors produced but never written: {sorted(cache)}")
        from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config

        save_config(CheckpointingConfig("torch_dist"), self.directory)  # metadata.json
        torch.save(common, os.path.join(self.directory, "common.pt"))

    @staticmethod
    def _checked(group: Group, tensors: dict, dtype: torch.dtype) -> dict:
        if set(tensors) != set(group.shapes):
            raise RuntimeError(f"{group.name}: produced {sorted(set(tensors) ^ set(group.shapes))} unexpectedly")
        for name, shape in group.shapes.items():
            expect_shape(name, tensors[name], shape, "the converted model")
        # contiguous: torch.save stores a view's whole storage, so a slice would write its parent.
        return {name: t.to(dtype).contiguous() for name, t in tensors.items()}


# ---- reading a torch_dist checkpoint -------------------------------------------------------------

class _RegionLoadPlanner(LoadPlanner):
    """Loads given regions of stored tensors into given destination tensors."""

    def __init__(self, regions: dict):
        self.regions = regions  # key -> (destination tensor, offsets of its region in the global tensor)

    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False) -> None:
        self.metadata = metadata

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, (dest, offsets) in self.regions.items():
            chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=dest.shape)
            items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk])
        return LoadPlan(items)

    def create_global_plan(self, global_plan):
        return global_plan

    def finish_plan(self, central_plan):
        return central_plan

    def load_bytes(self, read_item, value) -> None:
        raise RuntimeError(f"unexpected object read: {read_item.dest_index.fqn}")

    def resolve_tensor(self, read_item):
        tensor = self.regions[read_item.dest_index.fqn][0]
        for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            tensor = tensor.narrow(dim, start, length)
        return tensor

    def commit_tensor(self, read_item, tensor) -> None:
        pass  # resolve_tensor returned a view of the destination: the data is already in place


def _brief(exc: BaseException) -> str:
    """One line for an exception (torch's messages run to paragraphs)."""
    if isinstance(exc, CheckpointException):  # failures: rank -> (exception, traceback frames)
        exc = next(iter(exc.failures.values()), (exc,))[0]
    line = (str(exc).strip().splitlines() or [""])[0]
    if len(line) > 120 and ". " in line:
        line = line.split(". ")[0]
    return f"{type(exc).__name__}: {line[:200]}"


class TorchDistReader:
    """Reads Megatron tensors (a group at a time) from one iteration directory."""

    def __init__(self, directory: str):
        self.directory = directory
        self._hint = (f"re-copy the checkpoint, or export another --iteration "
                      f"(found: {iterations(os.path.dirname(directory)) or 'none'})")
        if not os.path.isfile(os.path.join(directory, ".metadata")):
            raise ConversionError(f"{directory} has no .metadata file: not a torch_dist checkpoint, or an "
                                  f"incomplete one; {self._hint}")
        try:
            self.metadata = FileSystemReader(directory).read_metadata()
        except Exception as exc:
            raise ConversionError(f"cannot read {os.path.join(directory, '.metadata')} ({_brief(exc)}): it is "
                                  f"truncated or corrupt; {self._hint}") from exc

    def _files(self, key: str, offsets=None, sizes=None) -> dict:
        """Relative path -> bytes the stored chunks of `key` (those overlapping the region, if given)
        need in it, from the storage index in .metadata."""
        files = {}
        for chunk in self.metadata.state_dict_metadata[key].chunks:
            if offsets is not None and not all(c < o + s and o < c + cs for c, cs, o, s in
                                               zip(chunk.offsets, chunk.sizes, offsets, sizes)):
                continue
            info = self.metadata.storage_data.get(MetadataIndex(key, chunk.offsets))
            if info is not None:
                files[info.relative_path] = max(files.get(info.relative_path, 0), info.offset + info.length)
        return files

    def check_files(self, keys) -> None:
        """Every data file holding the tensors is present and as long as .metadata records (a shard
        missing or cut short by an interrupted copy is refused before anything is written)."""
        for key in keys:
            for name, needed in sorted(self._files(key).items()):
                path = os.path.join(self.directory, name)
                if not os.path.isfile(path):
                    raise ConversionError(f"{path} is missing (it holds {key}): the checkpoint is incomplete; "
                                          f"{self._hint}")
                size = os.path.getsize(path)
                if size < needed:
                    raise ConversionError(f"{path} is truncated ({size} bytes, .metadata records {needed}; it "
                                          f"holds {key}); {self._hint}")

    def check(self, groups: list[Group], num_layers: int) -> torch.dtype:
        """Every tensor the config implies is stored with the implied shape; returns the stored dtype."""
        stored = self.metadata.state_dict_metadata
        dtypes = set()
        for group in groups:
            for name, shape in group.shapes.items():
                key, global_shape, _ = dcp_location(name, shape, num_layers)
                md = stored.get(key)
                if not isinstance(md, TensorStorageMetadata):
                    raise ConversionError(f"{self.directory} has no tensor {key}, which the checkpoint's args imply "
                                          f"({group.name}). The args and weights disagree; is the checkpoint complete?")
                if tuple(md.size) != tuple(global_shape):
                    raise ConversionError(f"{key} in {self.directory} has shape {list(md.size)} but the checkpoint's "
                                          f"args imply {list(global_shape)}; the args and weights disagree")
                dtypes.add(md.properties.dtype)
        self.check_files(dcp_location(name, shape, num_layers)[0] for group in groups for name, shape in
                         group.shapes.items())
        return torch.float32 if len(dtypes) != 1 else dtypes.pop()

    def read(self, group: Group, num_layers: int) -> dict:
        out, regions = {}, {}
        for name, shape in group.shapes.items():
            key, global_shape, offsets = dcp_location(name, shape, num_layers)
            dtype = self.metadata.state_dict_metadata[key].properties.dtype
            region = (1, *shape) if len(global_shape) > len(shape) else tuple(shape)
            buffer = torch.empty(region, dtype=dtype)
            regions[key] = (buffer, offsets)
            out[name] = buffer[0] if len(region) > len(shape) else buffer
        try:
            self._load(regions)
        except (Exception, CheckpointException) as exc:  # a shard corrupt in a way its size does not show
            key = next((k for k in regions if not self._loads({k: regions[k]})), None)
            where = (f"{key} from {', '.join(sorted(self._files(key, regions[key][1], regions[key][0].shape)))}"
                     if key else f"{group.name}")
            raise ConversionError(f"cannot read {where} in {self.directory} ({_brief(exc)}): the file is "
                                  f"corrupt; {self._hint}") from exc
        return out

    def _load(self, regions: dict) -> None:
        dcp.load({}, storage_reader=FileSystemReader(self.directory), planner=_RegionLoadPlanner(regions),
                 no_dist=True)

    def _loads(self, regions: dict) -> bool:
        """Whether these regions read (to find the bad file after a failed read)."""
        try:
            self._load(regions)
            return True
        except (Exception, CheckpointException):
            return False


# ---- the checkpoint directory ---------------------------------------------------------------

def read_common(root: str, iteration: int | None) -> tuple[int, str, dict]:
    if not os.path.isdir(root):
        raise ConversionError(f"--load {root} is not a directory; pass the directory given to pretrain_llama.py "
                              "--save or tools/convert_from_hf.py --save")
    found = iterations(root) or "none"
    if iteration is None:
        if not os.path.isfile(os.path.join(root, LATEST_FILE)) and found != "none":
            raise ConversionError(f"--load {root} has no {LATEST_FILE}, so the latest iteration is unknown; "
                                  f"pass --iteration N (found: {found})")
        iteration = read_latest_iteration(root)
        named = f"{LATEST_FILE} names iteration {iteration}, but"
    else:
        named = f"--iteration {iteration}:"
    directory = iteration_dir(root, iteration)
    if not os.path.isdir(directory):
        raise ConversionError(f"{named} {directory} does not exist; pass --iteration with one that does "
                              f"(found: {found})")
    path = os.path.join(directory, "common.pt")
    if not os.path.isfile(path):
        raise ConversionError(f"{path} is missing: {directory} is not a complete checkpoint of this project. "
                              f"Pass --iteration with one that is (found: {found})")
    try:
        common = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConversionError(f"cannot read {path}: {type(exc).__name__}: {exc}. It may be truncated; "
                              "load another --iteration") from exc
    if not isinstance(common.get("args"), dict):
        raise ConversionError(f"{path} records no args; only checkpoints written by pretrain_llama.py or "
                              "tools/convert_from_hf.py can be converted")
    return iteration, directory, common


def iterations(root: str) -> str:
    if not os.path.isdir(root):
        return ""
    return ", ".join(str(n) for n in sorted(int(name[len("iter_"):]) for name in os.listdir(root)
                                            if re.fullmatch(r"iter_\d{7}", name)))
