"""A checkpoint written before the model identity existed (tests/fixtures/legacy_tiny_crystal, a tiny μP
Crystal with non-default bases) still loads: its model is read from the flags it recorded, it resumes with the
losses the code that wrote it produced, its next checkpoint records the identity, and it exports to HF."""

import json
import shutil

import pytest
from launch import REPO, read_losses, run_pretrain

from megatron_ext.checkpoint.convert import megatron_to_hf, read_common
from megatron_ext.models.identity import ModelIdentity

FIXTURE = REPO / "tests" / "fixtures" / "legacy_tiny_crystal"
RECORD = json.loads((REPO / "tests" / "fixtures" / "legacy_tiny_crystal.json").read_text())


def test_legacy_checkpoint_identity_resume_and_export(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, ckpt)
    _, _, legacy = read_common(str(ckpt), None)
    assert "model_identity" not in legacy  # really the old format
    model = ModelIdentity.from_checkpoint(legacy)
    assert (model.num_layers, model.hidden_size, model.ffn_hidden_size, model.num_attention_heads) == (2, 32, 64, 2)
    assert (model.normalization, model.rotary_percent, model.rotary_interleaved, model.tie_embeddings) == \
        ("LayerNorm", 0.25, True, True)
    assert (model.mup_base_hidden_size, model.mup_base_ffn_hidden_size, model.mup_base_num_attention_heads,
            model.mup_base_init_std, model.init_method_std) == (16, 48, 1, 0.05, 0.03)
    assert model.padded_vocab_size == 128

    log = tmp_path / "log.jsonl"
    run_pretrain(["--device", "cpu", "--mock-data", "--load", ckpt, "--save", ckpt, "--micro-batch-size", 2,
                  "--global-batch-size", 4, "--lr", "1e-2", "--lr-decay-style", "constant", "--train-iters", 4,
                  "--log-interval", 1, "--seed", 7, "--log-json", log])
    expected = {int(k): v for k, v in RECORD["resumed_losses_at_512ae3b"].items()}
    losses = read_losses(log)
    assert sorted(losses) == sorted(expected)
    for iteration, loss in expected.items():  # same machine arithmetic: the resumed run is unchanged
        assert losses[iteration] == pytest.approx(loss, rel=1e-6), iteration

    _, _, resaved = read_common(str(ckpt), None)
    assert ModelIdentity.from_checkpoint(resaved) == model.replace(vocab_size=100)  # mock data: --vocab-size
    out = megatron_to_hf(str(ckpt), str(tmp_path / "hf"), progress=False)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["vocab_size"], config["rotary_dim"]) == (2, 32, 100, 4)
    assert out == str(tmp_path / "hf")
