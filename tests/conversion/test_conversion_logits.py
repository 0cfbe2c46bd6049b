"""A converted checkpoint computes what its source computes, at every tensor/pipeline layout:
HF LLaMA (GQA, head_dim 100, vocabulary 1000, untied and tied) -> Megatron at TP2, PP2, TP2xPP2 gives
transformers' logits; a μP model exported as LLaMA (multipliers folded) gives Megatron's μP logits in
stock transformers; a Crystal checkpoint gives the logits of an independent float64 forward.

All Megatron forwards run in one torchrun launch (start-up dominates their cost)."""

import json
import shutil
import subprocess

import pytest
import torch
from conversion_helpers import (TOKENS, assert_close, crystal_reference_logits, llama_logits, load_common,
                                random_crystal, random_llama)
from launch import REPO, test_env, torchrun_cmd

from megatron_ext.checkpoint.convert import hf_to_megatron, megatron_to_hf

LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2), "tp2xpp2": (2, 2)}
LLAMA_CASES = [("llama", layout) for layout in LAYOUTS] + [("llama-tied", "pp2"), ("llama-tied", "tp2xpp2")]
OTHER_CASES = [("llama-mup", "tp2xpp2"), ("crystal", "tp2xpp2")]
# μP multipliers given to a plain model (the same weights then compute different logits).
MUP_ARGS = dict(use_mup=True, mup_base_hidden_size=96, mup_width_scale=0.5, mup_embeddings_scale=3.0,
                mup_output_alpha=2.0, mup_scale_qk_dot_by_d=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(root, {(case, layout): Megatron logits}) for every case."""
    root = tmp_path_factory.mktemp("logits")
    random_llama(root / "hf-llama", tied=False, seed=0)
    random_llama(root / "hf-llama-tied", tied=True, seed=1)
    random_crystal(root / "hf-crystal")
    for name in ("llama", "llama-tied", "crystal"):
        hf_to_megatron(str(root / f"hf-{name}"), str(root / f"mg-{name}"), progress=False)
    shutil.copytree(root / "mg-llama", root / "mg-llama-mup")
    common_path = root / "mg-llama-mup" / "iter_0000000" / "common.pt"
    common = load_common(common_path.parent)
    common["args"].update(MUP_ARGS)
    torch.save(common, common_path)
    megatron_to_hf(str(root / "mg-llama-mup"), str(root / "hf-llama-mup"), progress=False)

    jobs = [dict(ckpt=str(root / f"mg-{case}"), tp=LAYOUTS[layout][0], pp=LAYOUTS[layout][1], tokens=TOKENS,
                 out=str(root / f"logits-{case}-{layout}.pt")) for case, layout in LLAMA_CASES + OTHER_CASES]
    (root / "jobs.json").write_text(json.dumps(jobs))
    cmd = torchrun_cmd(4, str(REPO / "tests/conversion/conversion_logits_worker.py")) + [str(root / "jobs.json")]
    proc = subprocess.run(cmd, cwd=REPO, env=test_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return root, {(case, layout): torch.load(root / f"logits-{case}-{layout}.pt")
                  for case, layout in LLAMA_CASES + OTHER_CASES}


@pytest.mark.parametrize("case,layout", LLAMA_CASES, ids=[f"{c}-{l}" for c, l in LLAMA_CASES])
def test_llama_logits_match_transformers(converted, case, layout):
    root, logits = converted
    assert_close(logits[(case, layout)], llama_logits(root / f"hf-{case}"), what=f"{case} at {layout}")


def test_mup_model_exported_as_llama_gives_the_same_logits(converted):
    root, logits = converted
    config = json.loads((root / "hf-llama-mup" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["architectures"] == ["LlamaForCausalLM"]
    hf = llama_logits(root / "hf-llama-mup")
    assert_close(logits[("llama-mup", "tp2xpp2")], hf, what="μP model exported as LLaMA")
    # The multipliers matter: the unfolded weights compute something else.
    assert (hf - llama_logits(root / "hf-llama")).abs().max() > 1e-2


def test_crystal_logits_match_float64_reference(converted):
    root, logits = converted
    reference = crystal_reference_logits(root / "hf-crystal")
    assert_close(logits[("crystal", "tp2xpp2")], reference, what="Crystal at TP2xPP2")
