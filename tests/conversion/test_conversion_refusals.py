"""The converters refuse, with the problem and the fix, rather than write a wrong or partial output:
an existing output without --overwrite, missing files, unsupported architectures, shapes that
disagree with config.json. A refused or failed conversion leaves nothing behind."""

import json
import os

import pytest
from conversion_helpers import random_crystal, random_llama, run_tool

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
