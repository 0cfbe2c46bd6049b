"""The model identity is one frozen description that survives every representation it passes through: flags,
a checkpoint's common.pt, and each Hugging Face config.json layout (for every preset, with μP bases that are
not the defaults). No process starts: the weights-level round trip is in test_model_identity_roundtrip.py."""

import dataclasses
import json

import pytest

from megatron_ext.arguments import parse_args
from megatron_ext.checkpoint import hf_llama, hf_openlm
from megatron_ext.checkpoint.convert import FORMATS, default_format
from megatron_ext.checkpoint.hf_arch import IDENTITY_KEY, restore_identity
from megatron_ext.models.identity import IdentityError, ModelIdentity
from megatron_ext.models.presets import PRESETS

import torch

RUN = ["--mock-data", "--device", "cpu", "--train-iters", "1"]

# Bases and knobs that differ from every default, so a field silently dropped on the way shows.
NON_DEFAULT_MUP = dict(use_mup=True, mup_base_hidden_size=32, mup_base_ffn_hidden_size=48,
                       mup_base_num_attention_heads=2, mup_base_head_dim=8, mup_embeddings_scale=3.5, mup_output_alpha=0.7,
                       mup_scale_qk_dot_by_d=True, mup_base_init_std=0.05, mup_scale_adam_eps=True)


def identities():
    """Every preset as it stands, and each with non-default training-only fields: μP bases where its HF layout
    can express μP (open_lm's cannot: its export is refused), the init and the vocabulary padding."""
    for name, preset in PRESETS.items():
        yield name, preset
        if default_format(preset) == hf_openlm.NAME:
            yield f"{name}+init", preset.replace(init_method="normal", init_method_std=0.011,
                                                 make_vocab_size_divisible_by=64)
        else:
            yield f"{name}+mup", preset.replace(**NON_DEFAULT_MUP, init_method_std=0.011,
                                                make_vocab_size_divisible_by=64)


def layout(identity: ModelIdentity):
    return FORMATS[default_format(identity)]


def through_hf_config(identity: ModelIdentity, tmp_path) -> ModelIdentity:
    """identity -> the layout's config.json (as an export writes it) -> the identity an import reads."""
    fmt = layout(identity)
    fmt.check_exportable(identity)
    fmt.write_config(identity, {}, str(tmp_path), torch.float32)
    config = json.loads((tmp_path / "config.json").read_text())
    return restore_identity(fmt.identity_from_config(config), config, fmt.EXPRESSED)


def fields(identity: ModelIdentity) -> dict:
    return dataclasses.asdict(identity)


@pytest.mark.parametrize("name,identity", list(identities()), ids=[n for n, _ in identities()])
def test_identity_survives_flags_checkpoint_and_hf_config(name, identity, tmp_path):
    # flags: the identity as argparse defaults (what --model-preset and --load do), parsed back
    args = parse_args(["--seq-length", "64"] + RUN, world_size=1, defaults=identity.as_flags())
    assert fields(args.model_identity.replace(vocab_size=identity.vocab_size)) == fields(identity)
    # checkpoint
    assert fields(ModelIdentity.from_checkpoint({"model_identity": identity.to_checkpoint()})) == fields(identity)
    # HF config.json of its layout, and back
    assert fields(through_hf_config(identity, tmp_path)) == fields(identity)


def test_an_edited_hf_config_wins_over_the_recorded_identity(tmp_path, capsys):
    identity = PRESETS["tiny"].replace(**NON_DEFAULT_MUP)
    hf_llama.write_config(identity, {}, str(tmp_path), torch.float32)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_hidden_layers"] = 6  # edited after the export
    restored = restore_identity(hf_llama.identity_from_config(config), config, hf_llama.EXPRESSED)
    assert restored.num_layers == 6 and not restored.use_mup
    assert "disagrees with its own num_layers" in capsys.readouterr().err
    # A plain HF config (no record) is read from its own fields.
    del config[IDENTITY_KEY]
    assert restore_identity(hf_llama.identity_from_config(config), config, hf_llama.EXPRESSED).num_layers == 6


def test_derived_fields_are_resolved_once():
    model = ModelIdentity(num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4, vocab_size=500)
    assert (model.num_query_groups, model.kv_channels, model.add_qkv_bias) == (4, 16, False)
    assert model.padded_vocab_size == 512 and model.rotary_dim == 16
    assert model == ModelIdentity(num_layers=2, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
                                  num_query_groups=4, kv_channels=16, add_qkv_bias=False, vocab_size=500)
    mup = model.replace(use_mup=True, mup_base_hidden_size=16, mup_output_alpha=2.0, mup_embeddings_scale=3.0)
    assert (mup.mup_width, mup.logits_multiplier, mup.embedding_multiplier) == (0.25, 0.5, 3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.hidden_size = 128


def test_a_preset_flag_override_rederives_what_depends_on_it():
    args = parse_args(["--model-preset", "tiny", "--hidden-size", "128"] + RUN, world_size=1)
    assert args.model_identity.kv_channels == 32  # 128 / 4 heads, not the preset's 16
    assert not hasattr(args, "hidden_size")  # one copy: the identity's


def test_conflicting_mup_widths_are_refused():
    with pytest.raises(SystemExit, match="--mup-base-hidden-size 32 implies width scale 0.5.*--mup-width-scale"):
        parse_args(["--model-preset", "tiny", "--use-mup", "--mup-base-hidden-size", "32", "--mup-width-scale",
                    "0.25"] + RUN, world_size=1)
    agreeing = parse_args(["--model-preset", "tiny", "--use-mup", "--mup-base-hidden-size", "32",
                           "--mup-width-scale", "0.5"] + RUN, world_size=1).model_identity
    assert agreeing.mup_base_hidden_size == 32 and agreeing.mup_width_scale is None and agreeing.mup_width == 0.5


def test_checkpoint_identity_from_a_newer_version_is_refused_with_the_fix():
    stored = PRESETS["tiny"].to_checkpoint()
    with pytest.raises(IdentityError, match="version 2.*upgrade megatron_ext"):
        ModelIdentity.from_checkpoint({"model_identity": {**stored, "version": 2}})
    with pytest.raises(IdentityError, match="sliding_window.*upgrade megatron_ext"):
        ModelIdentity.from_checkpoint({"model_identity": {**stored, "sliding_window": 4096}})


def test_mup_base_head_dim_reaches_the_rules():
    """--mup-base-head-dim: width grown through head dim counts in linear_proj's fan-in (issue 15, defect 5)."""
    from megatron_ext.models.parametrization import build_parametrization

    flags = ["--model-preset", "tiny", "--use-mup", "--mup-base-hidden-size", "32",
             "--mup-base-num-attention-heads", "4"] + RUN
    proj = "decoder.layers.0.self_attention.linear_proj.weight"
    same_head_dim = parse_args(flags, world_size=1).model_identity  # 4 heads x 16 at base and target
    grown = parse_args(flags + ["--mup-base-head-dim", "8"], world_size=1).model_identity
    assert grown.mup_base_head_dim == 8
    assert build_parametrization(same_head_dim).rules.lr_multiplier(proj) == 1.0
    assert build_parametrization(grown).rules.lr_multiplier(proj) == 0.5  # (4 x 16) / (4 x 8) = 2
