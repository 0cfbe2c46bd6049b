"""Round trips are exact: HF -> Megatron -> HF gives bit-identical tensors, config and tokenizer;
Megatron -> HF -> Megatron (from checkpoints pretrain_llama.py saved at TP2 and PP2, LLaMA and the
tiny-crystal preset) gives bit-identical weights under the same keys. A converted checkpoint resumes
in pretrain_llama.py with no model flags, and its first loss is the source model's own loss on that batch."""

import filecmp
import json
import subprocess

import numpy

import pytest
import torch
from conversion_helpers import (crystal_reference_logits, load_common, model_tensors, random_crystal,
                                random_llama, run_tool, save_common, stored_entries)
from launch import REPO, subprocess_env, torchrun_cmd
from safetensors.torch import load_file

from megatron_ext.checkpoint.convert import hf_to_megatron, megatron_to_hf
from megatron_ext.checkpoint.hf_arch import IDENTITY_KEY
from megatron_ext.models.identity import ModelIdentity

PRETRAINED = {  # name -> pretrain_llama.py flags (2 processes each)
    "tiny-tp2": ["--model-preset", "tiny", "--tensor-model-parallel-size", 2],
    "tiny-pp2": ["--model-preset", "tiny", "--pipeline-model-parallel-size", 2],
    "crystal-pp2": ["--model-preset", "tiny-crystal", "--pipeline-model-parallel-size", 2],
}
RUN = ["--mock-data", "--device", "cpu", "--train-iters", 2, "--micro-batch-size", 1, "--global-batch-size", 2,
       "--lr", "1e-2", "--lr-decay-style", "constant", "--log-interval", 1]


def _launch(args: list) -> subprocess.Popen:
    cmd = torchrun_cmd(2, str(REPO / "pretrain_llama.py")) + [str(a) for a in args]
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(procs: dict) -> dict:
    outputs = {}
    for name, proc in procs.items():
        outputs[name] = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f"{name}:\n{outputs[name][-5000:]}"
    return outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Checkpoints saved by pretrain_llama.py, all launched at once (their start-up, not their compute, is
    what costs)."""
    root = tmp_path_factory.mktemp("pretrain")
    procs = {name: _launch(RUN + flags + ["--save", root / name]) for name, flags in PRETRAINED.items()}
    return root, _finish(procs)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Runs resumed from converted HF models (LLaMA at PP2, CrystalCoder at TP2), with their loss logs."""
    root = tmp_path_factory.mktemp("resumed")
    random_llama(root / "hf-llama", tied=False)
    hf_to_megatron(str(root / "hf-llama"), str(root / "converted"), progress=False)
    random_crystal(root / "hf-crystal")
    hf_to_megatron(str(root / "hf-crystal"), str(root / "converted-crystal"), progress=False)
    procs = {"resumed": _launch(RUN + ["--load", root / "converted", "--pipeline-model-parallel-size", 2,
                                       "--log-json", root / "resumed.jsonl"]),
             "resumed-crystal": _launch(RUN + ["--load", root / "converted-crystal", "--tensor-model-parallel-size",
                                               2, "--log-json", root / "resumed-crystal.jsonl"])}
    return root, _finish(procs)


def _assert_same_hf(a, b) -> None:
    """Two Hugging Face directories hold bit-identical tensors, config and tokenizer files."""
    tensors = {}
    for directory in (a, b):
        files = sorted(directory.glob("*.safetensors"))
        tensors[directory] = {k: v for f in files for k, v in load_file(f).items()}
    ta, tb = tensors[a], tensors[b]
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), name
    for name in ("config.json", "generation_config.json"):
        if (a / name).exists():
            expected, written = json.loads((a / name).read_text()), json.loads((b / name).read_text())
            if name == "config.json":  # the export adds only its record of the model identity
                assert ModelIdentity.from_checkpoint({"model_identity": written.pop(IDENTITY_KEY)}).hidden_size == \
                    expected["hidden_size" if "hidden_size" in expected else "n_embd"]
            assert expected == written, name
    tokenizer = [p.name for p in a.iterdir() if p.name.startswith(("tokenizer", "special_tokens"))]
    assert tokenizer and all(filecmp.cmp(a / n, b / n, shallow=False) for n in tokenizer), tokenizer


def test_hf_megatron_hf_with_the_command_line_tools(tmp_path):
    random_llama(tmp_path / "hf", tied=False)
    run_tool("convert_from_hf", "--hf", tmp_path / "hf", "--save", tmp_path / "mg")
    run_tool("convert_to_hf", "--load", tmp_path / "mg", "--out", tmp_path / "back", "--dtype", "fp32")
    _assert_same_hf(tmp_path / "hf", tmp_path / "back")
    common = load_common(tmp_path / "mg" / "iter_0000000")
    assert common["iteration"] == 0 and "optimizer" not in common and "opt_param_scheduler" not in common
    model = ModelIdentity.from_checkpoint(common)
    assert model.padded_vocab_size == 1024 and model.num_query_groups == 2
    # The source's tokenizer travels with the checkpoint, byte for byte, and the checkpoint's args use it.
    copied = sorted(p.name for p in (tmp_path / "mg" / "tokenizer").iterdir())
    assert "tokenizer.json" in copied
    assert all(filecmp.cmp(tmp_path / "hf" / n, tmp_path / "mg" / "tokenizer" / n, shallow=False) for n in copied)
    assert common["args"]["tokenizer_type"] == "HuggingFaceTokenizer"
    assert common["args"]["tokenizer_model"] == str((tmp_path / "mg" / "tokenizer").resolve())


@pytest.mark.parametrize("kind", ["llama-tied", "crystal"])
def test_hf_megatron_hf_is_identical(tmp_path, kind):
    if kind == "crystal":
        random_crystal(tmp_path / "hf")
    else:
        random_llama(tmp_path / "hf", tied=True, seed=3)
    hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), progress=False)
    megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "back"), progress=False)
    _assert_same_hf(tmp_path / "hf", tmp_path / "back")


def test_bf16_export_is_sharded_and_loads_in_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    random_llama(tmp_path / "hf", tied=False)
    hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), progress=False)
    megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "out"), dtype=torch.bfloat16, max_shard_bytes=400_000,
                   progress=False)
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    source = load_file(tmp_path / "hf" / "model.safetensors")
    assert model.dtype == torch.bfloat16
    state = model.state_dict()
    for name, tensor in source.items():
        assert torch.equal(state[name], tensor.to(torch.bfloat16)), name


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_megatron_hf_megatron_is_identical(runs, tmp_path, name):
    root, _ = runs
    original = root / name / "iter_0000002"
    if name == "tiny-tp2":  # once through the command-line tools, the rest through the library
        run_tool("convert_to_hf", "--load", root / name, "--out", tmp_path / "hf")
        run_tool("convert_from_hf", "--hf", tmp_path / "hf", "--save", tmp_path / "mg")
    else:
        megatron_to_hf(str(root / name), str(tmp_path / "hf"), progress=False)
        hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), progress=False)
    converted = tmp_path / "mg" / "iter_0000000"
    assert stored_entries(converted) == stored_entries(original)  # same keys, shapes and objects
    before, after = model_tensors(original), model_tensors(converted)
    vocab = load_common(original)["args"]["vocab_size"]
    for key, tensor in before.items():
        if key in ("embedding.word_embeddings.weight", "output_layer.weight"):
            assert not after[key][vocab:].any(), f"{key}: padding rows are not zero"
            tensor, after[key] = tensor[:vocab], after[key][:vocab]
        assert torch.equal(tensor, after[key]), key
    assert ModelIdentity.from_checkpoint(load_common(original)) == ModelIdentity.from_checkpoint(load_common(converted))


def _source_model_loss(hf_dir, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """The Hugging Face source model's own mean per-token cross entropy (transformers' LlamaForCausalLM)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(tokens).logits.double()
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).item()


def test_converted_checkpoint_resumes_without_model_flags(resumed):
    """The converted checkpoint resumes with no model flags, at PP2, and its first training loss, computed
    before any update, equals the source HF model's own loss on the same batch: a garbled conversion (gate
    and up swapped, a tensor transposed, norms mixed up) changes this loss, even when it round-trips."""
    from launch import read_losses

    from megatron_ext.data.loader import MockGPTDataset

    root, outputs = resumed
    log = outputs["resumed"]
    assert "iteration        1/       2" in log and "iteration        2/       2" in log, log[-3000:]
    losses = read_losses(root / "resumed.jsonl")
    assert sorted(losses) == [1, 2], losses
    # Iteration 1's global batch: samples 0 and 1 of the mock data (global batch 2, one data-parallel rank),
    # the same size of sequences as the run (from the converted checkpoint, which --load takes them from).
    ckpt_args = load_common(root / "converted" / "iter_0000000")["args"]
    data = MockGPTDataset(4, ckpt_args["seq_length"], ckpt_args["vocab_size"], seed=1234)  # --seed default
    samples = [data[i] for i in (0, 1)]
    tokens = torch.as_tensor(numpy.stack([s["tokens"] for s in samples]))
    labels = torch.as_tensor(numpy.stack([s["labels"] for s in samples]))
    expected = _source_model_loss(root / "hf-llama", tokens, labels)
    assert abs(losses[1] - expected) < 1e-5 * expected, (
        f"first loss after conversion {losses[1]:.7f}, the source model's on the same batch {expected:.7f}")


def test_converted_crystal_checkpoint_trains_on_the_source_models_loss(resumed):
    """CrystalCoder's layout (Conv1D weights stored [in, out], fused qkv, biases, μP multipliers) converted
    and resumed at TP2: the first training loss equals the loss of the independent float64 forward of the
    source checkpoint (conversion_helpers.crystal_reference_logits) on the same batch, so a tensor left
    untransposed (or transposed twice) in both directions, invisible to a round trip, fails here."""
    from launch import read_losses

    from megatron_ext.data.loader import MockGPTDataset

    root, _ = resumed
    losses = read_losses(root / "resumed-crystal.jsonl")
    assert sorted(losses) == [1, 2], losses
    ckpt_args = load_common(root / "converted-crystal" / "iter_0000000")["args"]
    data = MockGPTDataset(4, ckpt_args["seq_length"], ckpt_args["vocab_size"], seed=1234)
    samples = [data[i] for i in (0, 1)]
    tokens = numpy.stack([s["tokens"] for s in samples])
    labels = torch.as_tensor(numpy.stack([s["labels"] for s in samples]))
    logits = crystal_reference_logits(root / "hf-crystal", tokens.tolist())
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).item()
    assert abs(losses[1] - expected) < 1e-5 * expected, (
        f"first loss after conversion {losses[1]:.7f}, the float64 reference on the same batch {expected:.7f}")


def test_bin_shards_and_sharded_safetensors_read_like_one_file(tmp_path):
    random_llama(tmp_path / "hf", tied=False)
    hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), progress=False)
    expected = model_tensors(tmp_path / "mg" / "iter_0000000")
    # The same weights as two weights-only .bin shards with an index, as older checkpoints ship them.
    bins = tmp_path / "bins"
    bins.mkdir()
    state = load_file(tmp_path / "hf" / "model.safetensors")
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save({n: state[n] for n in part}, bins / file)
        weight_map.update({n: file for n in part})
    (bins / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (bins / name).write_bytes((tmp_path / "hf" / name).read_bytes())
    # And as sharded safetensors (the exporter's own output, split small).
    megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "sharded"), max_shard_bytes=300_000, progress=False)
    # Several shards, and the index maps every exported tensor to the shard that holds it.
    weight_map = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())["weight_map"]
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and sorted(set(weight_map.values())) == shards, (shards, set(weight_map.values()))
    for shard in shards:
        assert sorted(load_file(tmp_path / "sharded" / shard)) == sorted(n for n, f in weight_map.items() if f == shard)
    assert sorted(weight_map) == sorted(state)
    for source in ("bins", "sharded"):
        hf_to_megatron(str(tmp_path / source), str(tmp_path / f"mg-{source}"), progress=False)
        converted = model_tensors(tmp_path / f"mg-{source}" / "iter_0000000")
        assert sorted(converted) == sorted(expected)
        assert all(torch.equal(converted[k], expected[k]) for k in expected), source


def test_export_of_a_run_with_a_sentencepiece_tokenizer(tmp_path):
    """A training run records its tokenizer, not the vocabulary size: the export takes the size from
    the tokenizer (dropping padding rows past it) and ships the tokenizer in transformers' format."""
    import sentencepiece
    from transformers import AutoTokenizer

    from megatron_ext.data.tokenizers import train_sentencepiece

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"word{i % 97} other{i % 13} text {i}"}) + "\n"
                              for i in range(400)))
    sp_model = train_sentencepiece([str(corpus)], str(tmp_path / "sp"), vocab_size=300)
    random_llama(tmp_path / "hf", tied=False)
    hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), progress=False)
    # Make it look like a training run's checkpoint from before the model identity (which records the true
    # vocabulary): the model flags and padded vocabulary in args, no import record, a SentencePiece tokenizer.
    common_path = tmp_path / "mg" / "iter_0000000" / "common.pt"
    common = load_common(common_path.parent)
    model = ModelIdentity.from_checkpoint(common)
    common["args"].update(model.as_flags(), padded_vocab_size=model.padded_vocab_size)
    for key in ("hf_config", "hf_generation_config", "hf_model_format", "vocab_size"):
        common["args"].pop(key)
    del common["model_identity"]
    common["args"].update(tokenizer_type="SentencePieceTokenizer", tokenizer_model=sp_model, mock_data=False)
    save_common(common_path.parent, common)
    for path in (tmp_path / "mg" / "tokenizer").iterdir():
        path.unlink()
    megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "out"), progress=False)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 300
    exported = load_file(tmp_path / "out" / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(exported, load_file(tmp_path / "hf" / "model.safetensors")["model.embed_tokens.weight"][:300])
    text = "word5 other3 text 42"
    expected = sentencepiece.SentencePieceProcessor(model_file=sp_model).encode(text)
    assert AutoTokenizer.from_pretrained(tmp_path / "out").encode(text, add_special_tokens=False) == expected
