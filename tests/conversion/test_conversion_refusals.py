"""The converters refuse, with the problem and the fix, rather than write a wrong or partial output:
an existing output without --overwrite, missing files, unsupported architectures, shapes that
disagree with config.json or the checkpoint's args, truncated or corrupt weight files (.safetensors
on import, .distcp shards on export), a missing or unknown iteration. A refused or failed conversion
leaves nothing behind."""

import json
import os
import shutil

import pytest
import torch
from conversion_helpers import load_common, random_crystal, random_llama, run_tool, save_common

from megatron_ext.checkpoint.convert import hf_to_megatron, megatron_to_hf


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    random_llama(root / "llama", tied=False)
    random_crystal(root / "crystal")
    hf_to_megatron(str(root / "crystal"), str(root / "crystal-mg"), progress=False)
    return root


def _refused(call, *phrases):
    with pytest.raises(SystemExit) as info:
        call()
    message = str(info.value.code)
    assert message.startswith("error:") and all(p in message for p in phrases), message
    return message


def _copy_hf(src, dst, config_edit=None):
    dst.mkdir()
    for name in os.listdir(src):
        (dst / name).write_bytes((src / name).read_bytes())
    if config_edit:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def _leftovers(directory):
    return [p.name for p in directory.parent.iterdir() if p.name.startswith(directory.name + ".")]


def test_existing_output_needs_overwrite(sources, tmp_path):
    out = tmp_path / "mg"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _refused(lambda: hf_to_megatron(str(sources / "llama"), str(out), progress=False), "already exists", "--overwrite")
    _refused(lambda: megatron_to_hf(str(sources / "crystal-mg"), str(out), progress=False), "--overwrite")
    assert os.listdir(out) == ["keep.txt"] and not _leftovers(out)
    hf_to_megatron(str(sources / "llama"), str(out), overwrite=True, progress=False)
    assert sorted(os.listdir(out)) == ["iter_0000000", "latest_checkpointed_iteration.txt", "tokenizer"]


def test_command_line_refusal_exits_nonzero_with_the_fix(sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("")
    proc = run_tool("convert_to_hf", "--load", sources / "crystal-mg", "--out", out, check=False)
    assert proc.returncode == 1 and "error:" in proc.stdout and "--overwrite" in proc.stdout, proc.stdout[-2000:]


def test_missing_config_json(sources, tmp_path):
    hf = _copy_hf(sources / "llama", tmp_path / "hf")
    (hf / "config.json").unlink()
    _refused(lambda: hf_to_megatron(str(hf), str(tmp_path / "mg"), progress=False), "config.json", "missing")
    assert not (tmp_path / "mg").exists()


def test_missing_weights(sources, tmp_path):
    hf = _copy_hf(sources / "llama", tmp_path / "hf")
    (hf / "model.safetensors").unlink()
    _refused(lambda: hf_to_megatron(str(hf), str(tmp_path / "mg"), progress=False), "no weights")


def test_shapes_that_disagree_with_the_config(sources, tmp_path):
    hf = _copy_hf(sources / "llama", tmp_path / "hf", lambda c: c.update(intermediate_size=352))
    _refused(lambda: hf_to_megatron(str(hf), str(tmp_path / "mg"), progress=False), "mlp.gate_proj.weight",
             "[320, 192]", "[352, 192]", "config.json")
    assert not (tmp_path / "mg").exists() and not _leftovers(tmp_path / "mg")


def test_unsupported_architecture(sources, tmp_path):
    hf = _copy_hf(sources / "llama", tmp_path / "hf", lambda c: c.update(model_type="gpt_neox",
                                                                        architectures=["GPTNeoXForCausalLM"]))
    _refused(lambda: hf_to_megatron(str(hf), str(tmp_path / "mg"), progress=False), "unsupported architecture",
             "gpt_neox")
    scaled = _copy_hf(sources / "llama", tmp_path / "scaled",
                      lambda c: c.update(rope_parameters={"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}))
    _refused(lambda: hf_to_megatron(str(scaled), str(tmp_path / "mg"), progress=False), "llama3")


def test_unsupported_export_layout(sources, tmp_path):
    _refused(lambda: megatron_to_hf(str(sources / "crystal-mg"), str(tmp_path / "hf"), model_format="llama",
                                    progress=False), "LayerNorm", "--model-format crystalcoder")
    assert not (tmp_path / "hf").exists()


# ---- damaged inputs ----------------------------------------------------------------------------

def _copy_mg(sources, dst):
    """A copy without checksums.sha256, as checkpoints written before checksums existed: the damage
    tests below exercise the reader's own checks, which guard those (the checksum refusal, which comes
    first when the sums exist, is tested in tests/checkpoint/test_checkpoint_safety.py)."""
    shutil.copytree(sources / "crystal-mg", dst)
    (dst / "iter_0000000" / "checksums.sha256").unlink()
    return dst


def _shard_of(ckpt, key: str, layer: int) -> str:
    """The .distcp file that holds one layer of a stacked tensor, from the checkpoint's .metadata."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(ckpt / "iter_0000000")).read_metadata()
    return next(info.relative_path for index, info in metadata.storage_data.items()
                if index.fqn == key and index.offset[0] == layer)


def _export_refused(ckpt, out, *phrases, **kwargs):
    message = _refused(lambda: megatron_to_hf(str(ckpt), str(out), progress=False, **kwargs), *phrases)
    assert "\n" not in message, message
    assert not out.exists() and not _leftovers(out), os.listdir(out.parent)
    return message


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_distcp_shard_is_refused_before_writing(sources, tmp_path, damage):
    ckpt = _copy_mg(sources, tmp_path / "mg")
    shard = _shard_of(ckpt, "decoder.layers.mlp.linear_fc2.weight", layer=3)
    path = ckpt / "iter_0000000" / shard
    if damage == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    else:
        path.unlink()
    _export_refused(ckpt, tmp_path / "hf", str(path), damage, "decoder.layers.mlp.linear_fc2.weight",
                    "re-copy the checkpoint", "--iteration")


def test_truncated_shard_on_the_command_line_is_one_line_not_a_traceback(sources, tmp_path):
    ckpt = _copy_mg(sources, tmp_path / "mg")
    path = ckpt / "iter_0000000" / _shard_of(ckpt, "decoder.layers.self_attention.linear_qkv.weight", layer=0)
    os.truncate(path, 100)
    proc = run_tool("convert_to_hf", "--load", ckpt, "--out", tmp_path / "hf", check=False)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert len(errors) == 1 and path.name in errors[0] and "truncated" in errors[0], proc.stdout[-3000:]
    assert not (tmp_path / "hf").exists() and not _leftovers(tmp_path / "hf")


def test_corrupt_shard_found_mid_conversion_removes_the_staging_directory(sources, tmp_path):
    """Right size, garbage bytes: only reading finds it, after the earlier layers were written to
    the staging directory; the error names the file and nothing is left."""
    ckpt = _copy_mg(sources, tmp_path / "mg")
    shard = _shard_of(ckpt, "decoder.layers.mlp.linear_fc2.weight", layer=3)
    with open(ckpt / "iter_0000000" / shard, "r+b") as f:
        f.write(b"\0" * 64)
    _export_refused(ckpt, tmp_path / "hf", "cannot read decoder.layers.mlp.linear_fc2.weight", shard, "corrupt")


def test_missing_latest_file_or_unknown_iteration(sources, tmp_path):
    ckpt = _copy_mg(sources, tmp_path / "mg")
    _export_refused(ckpt, tmp_path / "hf", "--iteration 5", "iter_0000005", "does not exist", "found: 0",
                    iteration=5)
    (ckpt / "latest_checkpointed_iteration.txt").unlink()
    _export_refused(ckpt, tmp_path / "hf", "latest_checkpointed_iteration.txt", "pass --iteration N", "found: 0")
    _export_refused(tmp_path / "nowhere", tmp_path / "hf", "nowhere", "not a directory")


def test_args_that_disagree_with_the_stored_shapes(sources, tmp_path):
    ckpt = _copy_mg(sources, tmp_path / "mg")
    common_path = ckpt / "iter_0000000" / "common.pt"
    common = load_common(common_path.parent)
    common["model_identity"]["ffn_hidden_size"] = 192  # stored: 176
    save_common(common_path.parent, common)
    _export_refused(ckpt, tmp_path / "hf", "decoder.layers.mlp.linear_fc1.weight", "[4, 352, 64]",
                    "[4, 384, 64]", "disagree")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_on_import(sources, tmp_path, damage):
    hf = _copy_hf(sources / "llama", tmp_path / "hf")
    weights = hf / "model.safetensors"
    if damage == "truncated":
        os.truncate(weights, weights.stat().st_size - 1000)
    else:
        weights.write_bytes(b"not a safetensors file" * 10)
    message = _refused(lambda: hf_to_megatron(str(hf), str(tmp_path / "mg"), progress=False), str(weights),
                       "truncated or corrupt", "re-download")
    assert "\n" not in message
    assert not (tmp_path / "mg").exists() and not _leftovers(tmp_path / "mg")
