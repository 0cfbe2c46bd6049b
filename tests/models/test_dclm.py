"""DCLM-1B's architecture (open_lm): a tiny random model in open_lm's HF layout, converted, computes the logits
of an independent plain-torch forward of open_lm's math (openlm_reference.py) at every parallel layout; its
full-width query/key norm has the single-process gradients under TP; HF -> Megatron -> HF is bit-exact, also
after a reshard to another layout; the open_lm initialisation and the GPT-NeoX-style tokenizer work."""

import json
import math
import subprocess

import pytest
import torch
from launch import REPO, run_pretrain, subprocess_env, torchrun_cmd
from openlm_reference import openlm_forward, read_openlm, write_tiny_openlm

from megatron_ext.checkpoint.convert import hf_to_megatron, megatron_to_hf
from megatron_ext.checkpoint.hf_arch import IDENTITY_KEY
from megatron_ext.models.identity import ModelIdentity
from megatron_ext.models.presets import PRESETS

TOKENS = [[1, 5, 199, 17, 100, 2, 64, 150, 0, 33], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]
# name: (TP, PP, sequence parallel); run on 4 processes (the rest data-parallel replicas)
LAYOUTS = {"tp1": (1, 1, False), "tp2": (2, 1, False), "tp2-sp": (2, 1, True), "pp2": (1, 2, False),
           "tp2xpp2": (2, 2, False)}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("dclm")
    write_tiny_openlm(root / "hf", dim=64, n_layers=2, n_heads=4, vocab_size=200, seq_len=64, seed=3, shards=2)
    hf_to_megatron(str(root / "hf"), str(root / "mg"), progress=False)
    return root


def test_import_reads_the_dclm_architecture(converted):
    common = torch.load(converted / "mg" / "iter_0000000" / "common.pt", weights_only=True)
    model = ModelIdentity.from_checkpoint(common)
    tiny = PRESETS["tiny-dclm"]
    for field in ("normalization", "layernorm_bias", "qk_norm", "add_bias_linear", "rotary_interleaved",
                  "rotary_percent", "tie_embeddings", "norm_epsilon"):
        assert getattr(model, field) == getattr(tiny, field), field
    assert (model.hidden_size, model.num_layers, model.ffn_hidden_size, model.vocab_size) == (64, 2, 256, 200)


def test_logits_match_the_reference_at_every_layout(converted):
    tensors, config = read_openlm(converted / "hf")
    reference = openlm_forward(tensors, config, torch.tensor(TOKENS))  # float64
    jobs = [dict(ckpt=str(converted / "mg"), tp=tp, pp=pp, sp=sp, tokens=TOKENS, out=str(converted / f"{name}.pt"))
            for name, (tp, pp, sp) in LAYOUTS.items()]
    (converted / "jobs.json").write_text(json.dumps(jobs))
    cmd = torchrun_cmd(4, str(REPO / "tests" / "conversion" / "conversion_logits_worker.py")) + [
        str(converted / "jobs.json")]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    scale = reference.abs().max()
    for name in LAYOUTS:
        logits = torch.load(converted / f"{name}.pt", weights_only=True).double()
        assert logits.shape == reference.shape, name
        error = (logits - reference).abs().max() / scale
        assert error < 1e-5, f"{name}: max error {error:.2e} of the largest logit"


def _stored(directory) -> dict:
    tensors, config = read_openlm(directory)
    config.pop(IDENTITY_KEY, None)
    return tensors, config


def test_hf_megatron_hf_is_bit_exact_also_after_a_reshard(converted, capsys):
    source_tensors, source_config = _stored(converted / "hf")
    megatron_to_hf(str(converted / "mg"), str(converted / "back"), progress=False)
    assert "transformers loads only with open_lm's code installed" in capsys.readouterr().err  # none to carry
    # Resharded: loaded at TP2 x PP2, saved there (lr 0: Adam moves nothing), exported from that layout.
    run_pretrain(["--load", converted / "mg", "--save", converted / "resharded", "--mock-data", "--device", "cpu",
                  "--tensor-model-parallel-size", 2, "--pipeline-model-parallel-size", 2, "--micro-batch-size", 1,
                  "--global-batch-size", 2, "--train-iters", 1, "--lr", 0.0, "--min-lr", 0.0,
                  "--lr-decay-style", "constant", "--weight-decay", 0.0], nproc=4)
    megatron_to_hf(str(converted / "resharded"), str(converted / "back-resharded"), progress=False)
    for out in ("back", "back-resharded"):
        tensors, config = _stored(converted / out)
        assert sorted(tensors) == sorted(source_tensors), out
        for name, tensor in source_tensors.items():
            assert tensors[name].dtype == tensor.dtype and torch.equal(tensors[name], tensor), f"{out}: {name}"
        assert config == source_config, out
        assert json.loads((converted / out / "config.json").read_text())[IDENTITY_KEY]["qk_norm"] == "full"


def test_full_width_qk_norm_is_exact_under_tp(tmp_path):
    """The norm alone, fixed inputs, on 1 and on 2 TP ranks (each holding half the heads): output, input
    gradient and gain gradient equal a float64 LayerNorm over the full width, within 1e-6 (fp32)."""
    from qk_norm_worker import HEAD_DIM, HEADS, inputs

    procs = {tp: subprocess.Popen(torchrun_cmd(tp, str(REPO / "tests" / "models" / "qk_norm_worker.py"))
                                  + [str(tmp_path / f"tp{tp}")], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for tp in (1, 2)}
    for proc in procs.values():
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, output[-5000:]
    x, gain, dy = (t.double() for t in inputs())
    x.requires_grad_(True)
    gain.requires_grad_(True)
    flat = x.reshape(6, 2, HEADS * HEAD_DIM)
    y = torch.nn.functional.layer_norm(flat, (HEADS * HEAD_DIM,), gain, None, 1e-5).view_as(x)
    y.backward(dy)
    expected = {"y": y.detach(), "dx": x.grad, "dgain": gain.grad}
    for tp in (1, 2):
        parts = [torch.load(tmp_path / f"tp{tp}.{rank}.pt", weights_only=True) for rank in range(tp)]
        got = {"y": torch.cat([p["y"] for p in parts], dim=2), "dx": torch.cat([p["dx"] for p in parts], dim=2),
               "dgain": torch.cat([p["dgain"] for p in parts])}
        for key, reference in expected.items():
            error = ((got[key].double() - reference).abs().max() / reference.abs().max()).item()
            assert error <= 1e-6, f"TP{tp} {key}: {error:.2e} of the largest value"


def test_qk_norm_gradients_in_the_model_under_tp(tmp_path):
    """One step of the tiny DCLM model on one process and at TP2 (with and without sequence parallelism),
    through the project's builders: the query/key norm gains' gradients, split across TP ranks, equal the single
    process's. Within 5e-6 of the largest: the rest of the model under TP (row-parallel sums) rounds differently
    in fp32 too (an ordinary TP-split fc2 gradient differs by about 1e-6); the norm alone is checked at 1e-6
    above."""
    base = ["--model-preset", "tiny-dclm", "--mock-data", "--device", "cpu", "--train-iters", "1",
            "--micro-batch-size", "1", "--global-batch-size", "4", "--lr", "1e-3", "--seed", "5"]

    def launch(nproc, out, cases):
        spec = [{"name": name, "argv": base + extra, "variants": {"kernels": []}} for name, extra in cases]
        cmd = torchrun_cmd(nproc, str(REPO / "tests" / "kernels" / "kernels_worker.py")) + [str(tmp_path / out),
                                                                                          json.dumps(spec)]
        return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    procs = [launch(1, "single", [("tp1", [])]),
             launch(2, "split", [("tp2", ["--tensor-model-parallel-size", "2"]),
                                 ("tp2-sp", ["--tensor-model-parallel-size", "2", "--sequence-parallel"])])]
    for proc in procs:
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, output[-5000:]
    single = torch.load(tmp_path / "single.0.pt", weights_only=True)["tp1"]["kernels"]["grads"]
    split = [torch.load(tmp_path / f"split.{rank}.pt", weights_only=True) for rank in (0, 1)]
    checked = 0
    for layer in range(PRESETS["tiny-dclm"].num_layers):
        for which in ("q_layernorm", "k_layernorm"):
            name = f"decoder.layers.{layer}.self_attention.{which}.weight"
            reference = single[f"{name}@tp0"]
            assert reference.abs().max() > 0, name
            for case in ("tp2", "tp2-sp"):
                joined = torch.cat([split[r][case]["kernels"]["grads"][f"{name}@tp{r}"] for r in (0, 1)])
                error = ((joined - reference).abs().max() / reference.abs().max()).item()
                assert error <= 5e-6, f"{case} {name}: {error:.2e} of the largest gradient"
                checked += 1
    assert checked == 2 * 2 * PRESETS["tiny-dclm"].num_layers


def test_open_lm_initialisation_follows_the_recipe():
    """--init-method open_lm: std 1/sqrt(fan-in), residual outputs also / sqrt(2 (layer + 1)), cut at 3 std."""
    from megatron_ext.models.parametrization import build_parametrization

    model = PRESETS["tiny-dclm"].replace(hidden_size=256, kv_channels=64, ffn_hidden_size=768, num_layers=4,
                                         vocab_size=512)
    sample = build_parametrization(model).sample
    generator = torch.Generator()
    expected = {"embedding.word_embeddings.weight": ((512, 256), 1 / math.sqrt(256)),
                "decoder.layers.0.self_attention.linear_qkv.weight": ((768, 256), 1 / math.sqrt(256)),
                "decoder.layers.2.self_attention.linear_proj.weight": ((256, 256), 1 / math.sqrt(256) / math.sqrt(6)),
                "decoder.layers.3.mlp.linear_fc2.weight": ((256, 768), 1 / math.sqrt(768) / math.sqrt(8)),
                "output_layer.weight": ((512, 256), 1 / math.sqrt(256))}
    for name, (shape, std) in expected.items():
        generator.manual_seed(0)
        weights = sample(name, shape, generator, "cpu")
        assert weights.abs().max() <= 3 * std * (1 + 1e-6), name
        assert weights.abs().max() > 2.5 * std, f"{name}: cut at 3 std, not 2"
        # a normal cut at 3 std has std 0.9866 x std
        assert weights.std().item() == pytest.approx(0.9866 * std, rel=0.03), name
    assert torch.equal(sample("decoder.layers.0.self_attention.q_layernorm.weight", (256,), generator, "cpu"),
                       torch.ones(256))


def save_neox_style_tokenizer(directory) -> int:
    """A tiny byte-level BPE like GPT-NeoX-20B's (DCLM's tokenizer), saved as DCLM ships it: tokenizer.json
    with <|endoftext|> as a special token. Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([f"the quick brown fox {i} jumps over the lazy dog" for i in range(50)], trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return tok.get_vocab_size()


def test_gpt_neox_style_tokenizer_through_preprocessing_import_training_and_export(tmp_path):
    """--tokenizer-type HuggingFaceTokenizer on a directory holding only tokenizer.json: <|endoftext|> ends each
    document in preprocessing; an import carries the tokenizer and its checkpoint names it; a run loading it
    trains on the preprocessed data; the export writes the tokenizer back byte for byte."""
    import numpy as np

    from megatron_ext.data.preprocess import preprocess_jsonl
    from megatron_ext.data.tokenizers import build_tokenizer

    vocab = save_neox_style_tokenizer(tmp_path / "tok")
    tokenizer = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tok"))
    end = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["added_tokens"][0]
    assert end["content"] == "<|endoftext|>" and tokenizer.eod == end["id"]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"the lazy dog {i}"}) + "\n" for i in range(5)))
    prefixes, _ = preprocess_jsonl(str(docs), str(tmp_path / "data"), tokenizer_type="HuggingFaceTokenizer",
                                   tokenizer_model=str(tmp_path / "tok"), append_eod=True, progress=False)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefixes["text"])
    assert len(dataset) == 5 and all(int(np.asarray(dataset[i])[-1]) == tokenizer.eod for i in range(5))

    # As DCLM-1B: more embedding rows (50432) than the tokenizer has ids (50277). The import records the padding,
    # so a bare --load trains with the checkpoint's rows.
    rows = 384
    assert vocab < rows
    write_tiny_openlm(tmp_path / "hf", vocab_size=rows, seed=1)
    (tmp_path / "hf" / "tokenizer.json").write_bytes((tmp_path / "tok" / "tokenizer.json").read_bytes())
    hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), progress=False)
    args = torch.load(tmp_path / "mg" / "iter_0000000" / "common.pt", weights_only=True)["args"]
    assert (args["tokenizer_type"], args["vocab_pad_to"]) == ("HuggingFaceTokenizer", rows)
    assert build_tokenizer(args["tokenizer_type"], args["tokenizer_model"]).eod == tokenizer.eod
    run_pretrain(["--load", tmp_path / "mg", "--save", tmp_path / "trained", "--data-path", prefixes["text"],
                  "--split", "100,0,0", "--device", "cpu", "--micro-batch-size", 1, "--global-batch-size", 1,
                  "--train-iters", 1, "--lr", 0.0, "--min-lr", 0.0, "--weight-decay", 0.0, "--seq-length", 16])
    megatron_to_hf(str(tmp_path / "trained"), str(tmp_path / "out"), progress=False)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == rows


def test_mup_classifies_every_dclm_parameter():
    """μP's rules know every tensor of the architecture (the query/key norm gains are vector-like norm gains)."""
    from mup.rules import ParamClass, classify

    from megatron_ext.checkpoint.hf_arch import groups

    model = PRESETS["tiny-dclm"].replace(init_method="normal")
    names = [name for group in groups(model) for name in group.shapes]
    assert any("q_layernorm" in n for n in names) and any("k_layernorm" in n for n in names)
    classes = {name: classify(name) for name in names}
    assert {classes[n] for n in names if "layernorm" in n} == {ParamClass.NORM}


def test_converted_dclm_trains_from_its_weights_in_the_gpu_configuration(tmp_path):
    """The GPU path: a converted DCLM-architecture model loaded with --bf16, TP2 x DP2, the distributed optimizer
    and both overlaps. At lr 0 on one repeated window, every iteration logs the source model's own loss (the
    reference forward's), so the loaded weights, not a fresh initialisation, are what trains."""
    import numpy as np
    from launch import read_losses, start_pretrain, wait_all
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from safetensors.torch import save_file

    seq = 32
    write_tiny_openlm(tmp_path / "hf", vocab_size=200, seq_len=64, seed=4)
    tensors, config = read_openlm(tmp_path / "hf")
    period = [(7 * i + 3) % 200 for i in range(seq)]
    window = torch.tensor([period + period[:1]])

    def loss_of(weights):
        logits = openlm_forward(weights, config, window[:, :-1], dtype=torch.float32)
        return torch.nn.functional.cross_entropy(logits[0], window[0, 1:])

    # Fit the source to the window, so its loss is far below a random model's (ln 200 = 5.3).
    trained = {k: v.clone().requires_grad_(not k.endswith("inv_freq")) for k, v in tensors.items()}
    optimizer = torch.optim.Adam([v for v in trained.values() if v.requires_grad], lr=3e-3)
    for _ in range(20):
        optimizer.zero_grad()
        loss_of(trained).backward()
        optimizer.step()
    fitted = {k: v.detach().contiguous() for k, v in trained.items()}
    save_file(fitted, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    with torch.no_grad():
        source_loss = loss_of(fitted).item()
    assert source_loss < 4.0
    hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), progress=False)

    tokens = np.array(period * 200 + period[:1], dtype=np.uint16)
    builder = IndexedDatasetBuilder(str(tmp_path / "data.bin"), dtype=np.uint16)
    builder.add_document(torch.from_numpy(tokens.astype(np.int64)), [len(tokens)])
    builder.finalize(str(tmp_path / "data.idx"))
    log = tmp_path / "log.jsonl"
    wait_all({"gpu-config": start_pretrain(
        ["--load", tmp_path / "mg", "--data-path", tmp_path / "data", "--split", "100,0,0",
         "--tokenizer-type", "NullTokenizer", "--vocab-size", 199, "--device", "cpu", "--seq-length", seq,
         "--micro-batch-size", 1, "--global-batch-size", 2, "--train-iters", 4, "--log-interval", 1,
         "--lr", 0.0, "--min-lr", 0.0, "--lr-decay-style", "constant", "--weight-decay", 0.0, "--bf16",
         "--tensor-model-parallel-size", 2, "--use-distributed-optimizer", "--overlap-grad-reduce",
         "--overlap-param-gather", "--log-json", log], nproc=4)})
    losses = read_losses(log)
    assert sorted(losses) == [1, 2, 3, 4]
    for iteration, loss in losses.items():
        assert loss == pytest.approx(source_loss, abs=0.05), f"iteration {iteration}: {loss} vs {source_loss}"
