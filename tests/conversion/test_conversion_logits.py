"""A converted checkpoint computes what its source computes, at every tensor/pipeline layout:
HF LLaMA (GQA, head_dim 100, vocabulary 1000, untied and tied) -> Megatron at TP2, PP2, TP2xPP2 gives
transformers' logits; a μP model exported as LLaMA (multipliers folded) gives Megatron's μP logits in
stock transformers; a Crystal checkpoint gives the logits of an independent float64 forward. Models
whose RoPE convention differs from the target format's (interleaved LLaMA, half-split Crystal) compute
the same logits and export to the original tensors exactly.

All Megatron forwards run in one torchrun launch (start-up dominates their cost)."""

import json
import shutil
import subprocess

import pytest
import torch
from conversion_helpers import (TOKENS, assert_close, crystal_reference_logits, llama_logits, load_common,
                                random_crystal, random_llama, save_common)
from launch import REPO, subprocess_env, torchrun_cmd
from safetensors.torch import load_file, save_file

from megatron_ext.checkpoint.convert import hf_to_megatron, megatron_to_hf
from megatron_ext.checkpoint.hf_arch import (half_split_to_interleaved, interleaved_to_half_split,
                                             permute_head_channels)
from megatron_ext.models.identity import ModelIdentity

LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2), "tp2xpp2": (2, 2)}
LLAMA_CASES = [(case, layout) for case in ("llama", "llama-tied") for layout in LAYOUTS]
OTHER_CASES = [("llama-mup", "tp2xpp2"), ("llama-tied-mup", "pp2"), ("crystal", "tp2xpp2"), ("llama-interleaved", "tp2xpp2"),
               ("crystal-half-split", "tp2"), ("crystal-half-split", "pp2")]
# μP multipliers given to a plain model (the same weights then compute different logits); with depth-μP's
# residual-branch multiplier (4 layers over a base of 1: x 1/2), which the export folds into o_proj/down_proj.
MUP_FIELDS = dict(use_mup=True, mup_base_hidden_size=96, mup_width_scale=0.5, mup_embeddings_scale=3.0,
                mup_output_alpha=2.0, mup_scale_qk_dot_by_d=True, mup_base_num_layers=1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(root, {(case, layout): Megatron logits}) for every case."""
    root = tmp_path_factory.mktemp("logits")
    random_llama(root / "hf-llama", tied=False, seed=0)
    random_llama(root / "hf-llama-tied", tied=True, seed=1)
    random_crystal(root / "hf-crystal")
    for name in ("llama", "llama-tied", "crystal"):
        hf_to_megatron(str(root / f"hf-{name}"), str(root / f"mg-{name}"), progress=False)
    for name in ("llama", "llama-tied"):
        shutil.copytree(root / f"mg-{name}", root / f"mg-{name}-mup")
        _edit_model(root / f"mg-{name}-mup", **MUP_FIELDS)
        megatron_to_hf(str(root / f"mg-{name}-mup"), str(root / f"hf-{name}-mup"), progress=False)
    _other_rope_convention(root, "llama", interleaved=True)
    _other_rope_convention(root, "crystal", interleaved=False)

    jobs = [dict(ckpt=str(root / f"mg-{case}"), tp=LAYOUTS[layout][0], pp=LAYOUTS[layout][1], tokens=TOKENS,
                 out=str(root / f"logits-{case}-{layout}.pt")) for case, layout in LLAMA_CASES + OTHER_CASES]
    (root / "jobs.json").write_text(json.dumps(jobs))
    cmd = torchrun_cmd(4, str(REPO / "tests/conversion/conversion_logits_worker.py")) + [str(root / "jobs.json")]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return root, {(case, layout): torch.load(root / f"logits-{case}-{layout}.pt", weights_only=True)
                  for case, layout in LLAMA_CASES + OTHER_CASES}


def _edit_model(ckpt, **changes):
    """Change fields of the model identity a checkpoint records."""
    path = ckpt / "iter_0000000" / "common.pt"
    common = load_common(path.parent)
    common["model_identity"] = ModelIdentity.from_checkpoint(common).replace(**changes).to_checkpoint()
    save_common(path.parent, common)


def _other_rope_convention(root, kind, interleaved: bool):
    """mg-{kind}-{convention}: the same function in the other RoPE convention, made by reordering the
    q/k channels of the HF weights, converting, and flipping rotary_interleaved in the model identity."""
    tensors = load_file(root / f"hf-{kind}" / "model.safetensors")
    if kind == "llama":
        perm = half_split_to_interleaved(100, 100)
        for name in [n for n in tensors if n.endswith(("q_proj.weight", "k_proj.weight"))]:
            tensors[name] = permute_head_channels(tensors[name], 100, perm)
    else:  # c_attn: [H, 3H] (Conv1D), columns [q | k | v]; head_dim 16, rotary_dim 4
        perm = interleaved_to_half_split(16, 4)
        for name in [n for n in tensors if "c_attn" in n]:
            cols = tensors[name].T if name.endswith("weight") else tensors[name]
            q, k, v = cols.split(64)
            cols = torch.cat([permute_head_channels(q, 16, perm), permute_head_channels(k, 16, perm), v])
            tensors[name] = (cols.T if name.endswith("weight") else cols).contiguous()
    name = f"{kind}-{'interleaved' if interleaved else 'half-split'}"
    shutil.copytree(root / f"hf-{kind}", root / f"hf-{name}")
    save_file(tensors, root / f"hf-{name}" / "model.safetensors", metadata={"format": "pt"})
    hf_to_megatron(str(root / f"hf-{name}"), str(root / f"mg-{name}"), progress=False)
    _edit_model(root / f"mg-{name}", rotary_interleaved=interleaved)
    megatron_to_hf(str(root / f"mg-{name}"), str(root / f"exported-{name}"), progress=False)


@pytest.mark.parametrize("case,layout", LLAMA_CASES, ids=[f"{c}-{l}" for c, l in LLAMA_CASES])
def test_llama_logits_match_transformers(converted, case, layout):
    root, logits = converted
    assert_close(logits[(case, layout)], llama_logits(root / f"hf-{case}"), what=f"{case} at {layout}")


@pytest.mark.parametrize("case,layout", [("llama-mup", "tp2xpp2"), ("llama-tied-mup", "pp2")])
def test_mup_model_exported_as_llama_gives_the_same_logits(converted, case, layout):
    root, logits = converted
    config = json.loads((root / f"hf-{case}" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["architectures"] == ["LlamaForCausalLM"]
    hf = llama_logits(root / f"hf-{case}")
    assert_close(logits[(case, layout)], hf, what=f"μP model ({case}) exported as LLaMA")
    # The multipliers matter: the unfolded weights compute something else.
    assert (hf - llama_logits(root / f"hf-{case.removesuffix('-mup')}")).abs().max() > 1e-2


def test_crystal_logits_match_float64_reference(converted):
    root, logits = converted
    reference = crystal_reference_logits(root / "hf-crystal")
    assert_close(logits[("crystal", "tp2xpp2")], reference, what="Crystal at TP2xPP2")


@pytest.mark.parametrize("kind,convention,layouts", [("llama", "interleaved", ["tp2xpp2"]),
                                                     ("crystal", "half-split", ["tp2", "pp2"])])
def test_other_rope_convention_computes_and_exports_the_same(converted, kind, convention, layouts):
    root, logits = converted
    reference = llama_logits(root / "hf-llama") if kind == "llama" else crystal_reference_logits(root / "hf-crystal")
    for layout in layouts:
        assert_close(logits[(f"{kind}-{convention}", layout)], reference, what=f"{kind} {convention} {layout}")
    exported = load_file(root / f"exported-{kind}-{convention}" / "model.safetensors")
    original = load_file(root / f"hf-{kind}" / "model.safetensors")
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():  # the reordering is undone exactly on export
        assert torch.equal(exported[name], tensor), name
