"""Export options and what an export carries: --iteration picks a saved iteration other than the
latest, --dtype fp16 writes fp16 tensors, and a Crystal export ships the configuration/modeling files
its config.json's auto_map names (carried from the Hugging Face source through the Megatron
checkpoint), or warns that they are missing."""

import json
import shutil

import pytest
import torch
from conversion_helpers import load_common, random_crystal, random_llama, run_tool, save_common
from safetensors.torch import load_file

from megatron_ext.checkpoint.convert import hf_to_megatron, megatron_to_hf

CODE = ("configuration_crystalcoder.py", "modeling_crystalcoder.py")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """mg-a (HF model A at iteration 0) and two-iterations: A at iteration 0, another model B at
    iteration 7, the latest."""
    root = tmp_path_factory.mktemp("export")
    for name, seed in (("a", 0), ("b", 1)):
        random_llama(root / f"hf-{name}", tied=False, seed=seed)
        hf_to_megatron(str(root / f"hf-{name}"), str(root / f"mg-{name}"), progress=False)
    two = root / "two-iterations"
    shutil.copytree(root / "mg-a", two)
    shutil.copytree(root / "mg-b" / "iter_0000000", two / "iter_0000007")
    common = load_common(two / "iter_0000007")
    common["iteration"] = 7
    save_common(two / "iter_0000007", common)
    (two / "latest_checkpointed_iteration.txt").write_text("7")
    return root


def _tensors(directory) -> dict:
    return {k: v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(f).items()}


def _assert_same(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype and torch.equal(actual[name], tensor), name


def test_iteration_flag_exports_a_non_latest_iteration(llama, tmp_path):
    a, b = _tensors(llama / "hf-a"), _tensors(llama / "hf-b")
    assert not torch.equal(a["model.norm.weight"], b["model.norm.weight"])  # the two iterations differ
    megatron_to_hf(str(llama / "two-iterations"), str(tmp_path / "latest"), progress=False)
    _assert_same(_tensors(tmp_path / "latest"), b)
    megatron_to_hf(str(llama / "two-iterations"), str(tmp_path / "first"), iteration=0, progress=False)
    _assert_same(_tensors(tmp_path / "first"), a)


def test_fp16_export_writes_fp16_tensors(llama, tmp_path):
    run_tool("convert_to_hf", "--load", llama / "mg-a", "--out", tmp_path / "hf", "--dtype", "fp16")
    exported = _tensors(tmp_path / "hf")
    _assert_same(exported, {k: v.to(torch.float16) for k, v in _tensors(llama / "hf-a").items()})
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float16", config


def _crystal_with_code(directory):
    random_crystal(directory)
    for name in CODE:  # stand-ins: the carry is byte-for-byte, whatever the files hold
        (directory / name).write_text(f"# stand-in for CrystalCoder's {name}\nMARKER = {name!r}\n")


def test_crystal_remote_code_is_carried_through_the_checkpoint(tmp_path, capsys):
    _crystal_with_code(tmp_path / "hf")
    hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), progress=False)
    assert sorted(p.name for p in (tmp_path / "mg" / "hf_code").iterdir()) == list(CODE)
    megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "out"), progress=False)
    # A training run that saved elsewhere: found next to the tokenizer it recorded (the import's).
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(tmp_path / "mg" / "iter_0000000", run / "iter_0000000")
    (run / "latest_checkpointed_iteration.txt").write_text("0")
    megatron_to_hf(str(run), str(tmp_path / "out-run"), progress=False)
    assert "auto_map" not in capsys.readouterr().err
    for out in ("out", "out-run"):
        auto_map = json.loads((tmp_path / out / "config.json").read_text())["auto_map"]
        assert {v.split(".")[0] + ".py" for v in auto_map.values()} == set(CODE)
        for name in CODE:
            assert (tmp_path / out / name).read_bytes() == (tmp_path / "hf" / name).read_bytes(), (out, name)


def test_crystal_export_without_remote_code_warns(tmp_path, capsys):
    random_crystal(tmp_path / "hf")  # config.json with auto_map, no modeling files
    hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), progress=False)
    assert "modeling_crystalcoder.py" in capsys.readouterr().err  # the import already says so
    megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "out"), progress=False)
    warning = capsys.readouterr().err
    assert all(n in warning for n in CODE) and "trust_remote_code" in warning and "CrystalCoder" in warning, warning
    assert (tmp_path / "out" / "model.safetensors").is_file() and "auto_map" in json.loads(
        (tmp_path / "out" / "config.json").read_text())
    assert not list((tmp_path / "out").glob("*.py"))


def test_llama_export_carries_no_code_and_does_not_warn(llama, tmp_path, capsys):
    megatron_to_hf(str(llama / "mg-a"), str(tmp_path / "hf"), progress=False)
    assert "auto_map" not in capsys.readouterr().err and not list((tmp_path / "hf").glob("*.py"))
    assert not (llama / "mg-a" / "hf_code").exists()
