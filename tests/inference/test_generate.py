"""tools/generate.py on a checkpoint against transformers' generate() on its HF export (issue 17 acceptance).

A tiny LLaMA is trained for a few steps on arithmetic progressions of words (so its greedy choices are clear,
and its continuations depend on more than the last token: attention and the KV cache matter), exported with
tools/convert_to_hf.py, and generated from with prompts of four lengths in one batch. Greedy output at TP1 and
TP2 equals transformers' greedy generate() on each prompt alone, token for token, with each token's
log-probability within 1e-4 (so a KV-cache error that leaves the argmax alone still fails); sampling with one
--seed gives the same tokens on two data-parallel replicas (two prompts to a batch) and at TP2 one prompt at a
time; at PP2 a stop string cuts the text where transformers' greedy text has it, generation stops there, and
the other prompts' greedy tokens are transformers'. All five launches start together."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from launch import REPO, run_pretrain, subprocess_env, torchrun_cmd
from word_tokenizer import WORDS, save_word_tokenizer

PROMPTS = ["w5 w6", "w10 w12 w14", "w100 w103 w106 w109 w112", "w40 w41 w42 w43 w44 w45 w46 w47 w48"]
NEW_TOKENS = 12
EOS = 2
SAMPLING = ["--temperature", "1.5", "--top-k", "50", "--top-p", "0.95", "--seed", "7"]


def progressions(prefix, documents: int = 400) -> None:
    """Documents w_s, w_{s+k}, w_{s+2k}, ... (k in 1..3, wrapping inside w3..w299), each ending with EOS."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for _ in range(documents):
        start, step = int(rng.integers(3, WORDS)), int(rng.integers(1, 4))
        doc = [3 + (start - 3 + step * i) % (WORDS - 3) for i in range(60)] + [EOS]
        builder.add_document(torch.tensor(doc), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def start_generate(ckpt, out, tp: int, *flags, pp: int = 1, nproc: int | None = None) -> subprocess.Popen:
    cmd = torchrun_cmd(nproc or tp * pp, str(REPO / "tools/generate.py")) + [
        "--load", str(ckpt), "--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp),
        "--device", "cpu", "--prompts-file",
        str(ckpt.parent / "prompts.jsonl"), "--max-new-tokens", str(NEW_TOKENS), "--output", str(out), *flags]
    return subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def hf_greedy(hf_dir, prompt_ids) -> list[dict]:
    """transformers' greedy generate() on each prompt alone: tokens, each one's log-probability, and text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    results = []
    for ids in prompt_ids:
        ids = torch.tensor([ids])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                             eos_token_id=EOS, pad_token_id=EOS, output_logits=True, return_dict_in_generate=True)
        tokens = out.sequences[0, ids.shape[1]:].tolist()
        logprobs = [torch.log_softmax(step[0].double(), -1)[t].item() for step, t in zip(out.logits, tokens)]
        results.append({"tokens": tokens, "logprobs": logprobs, "decode": tokenizer.decode})
    return results


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("generate")
    save_word_tokenizer(root / "tok")
    progressions(root / "data")
    run_pretrain(["--model-preset", "tiny", "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                  root / "tok", "--data-path", root / "data", "--split", "100,0,0", "--seq-length", 64,
                  "--micro-batch-size", 4, "--global-batch-size", 16, "--train-iters", 40, "--lr", 1e-2,
                  "--lr-decay-style", "constant", "--device", "cpu", "--save", root / "ckpt"])
    export = subprocess.run([sys.executable, str(REPO / "tools/convert_to_hf.py"), "--load", str(root / "ckpt"),
                             "--out", str(root / "hf"), "--no-progress"], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert export.returncode == 0, export.stdout[-3000:]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    hf_tokenizer = AutoTokenizer.from_pretrained(root / "hf")
    prompt_ids = [hf_tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    reference = hf_greedy(root / "hf", prompt_ids)
    # A stop string that transformers' greedy text of prompt 1 holds after a few words.
    stop = " " + hf_tokenizer.decode(reference[1]["tokens"][4:5])
    ckpt = root / "ckpt"
    runs = {"greedy-tp1": start_generate(ckpt, root / "greedy-tp1.jsonl", 1),
            "greedy-tp2": start_generate(ckpt, root / "greedy-tp2.jsonl", 2),
            "stop-pp2": start_generate(ckpt, root / "stop-pp2.jsonl", 1, "--stop", stop, "zzz", pp=2),
            # Two data-parallel replicas, each with two of the prompts in one batch.
            "sample-dp2": start_generate(ckpt, root / "sample-dp2.jsonl", 1, *SAMPLING, nproc=2),
            "sample-tp2-one-at-a-time": start_generate(ckpt, root / "sample-tp2-one-at-a-time.jsonl", 2, *SAMPLING,
                                                       "--max-batch-size", "1")}
    outputs = {}
    for name, proc in runs.items():
        log = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{log[-5000:]}"
        outputs[name] = [json.loads(line) for line in (root / f"{name}.jsonl").read_text().splitlines()]
        outputs[name + ".log"] = log
    return dict(outputs, prompt_ids=prompt_ids, reference=reference, stop=stop, hf_tokenizer=hf_tokenizer)


@pytest.mark.parametrize("run", ["greedy-tp1", "greedy-tp2"])
def test_greedy_equals_transformers_token_for_token(generated, run):
    assert [r["prompt"] for r in generated[run]] == PROMPTS
    for i, (ours, ref) in enumerate(zip(generated[run], generated["reference"])):
        assert ours["prompt_tokens"] == generated["prompt_ids"][i]
        assert ours["tokens"] == ref["tokens"], f"prompt {i} ({PROMPTS[i]!r}) at {run}"
        assert np.allclose(ours["logprobs"], ref["logprobs"], atol=1e-4), (i, ours["logprobs"], ref["logprobs"])
        ended_by_eos = ref["tokens"][-1] == EOS
        assert ours["finish_reason"] == ("eos" if ended_by_eos else "length")
        assert ours["text"] == ref["decode"](ref["tokens"][:-1] if ended_by_eos else ref["tokens"])
    # The prompts have four lengths and all of them share one batch: the test covers the staggered start.
    assert len({len(p) for p in generated["prompt_ids"]}) == 4
    assert "----- completion 3 (" in generated[run + ".log"]  # rank 0 prints each completion


def test_stop_string_cuts_the_text_and_stops_generation(generated):
    stop, cut_any = generated["stop"], False
    for i, (ours, ref) in enumerate(zip(generated["stop-pp2"], generated["reference"])):
        full = ref["decode"](ref["tokens"])
        assert np.allclose(ours["logprobs"], ref["logprobs"][:len(ours["logprobs"])], atol=1e-4), i
        if stop not in full:
            assert ours["tokens"] == ref["tokens"] and ours["finish_reason"] != "stop"
            continue
        # Generation stops at the first token whose text completes the stop string.
        n = next(k for k in range(1, len(ref["tokens"]) + 1) if stop in ref["decode"](ref["tokens"][:k]))
        assert ours["tokens"] == ref["tokens"][:n], i
        assert ours["text"] == full[:full.index(stop)] and ours["finish_reason"] == "stop"
        cut_any |= n < len(ref["tokens"])
    assert cut_any, f"the stop string {stop!r} cut no generation short"


def test_sampling_is_reproducible_with_a_seed_at_any_layout_and_batch(generated):
    one_batch, one_at_a_time = generated["sample-dp2"], generated["sample-tp2-one-at-a-time"]
    assert [r["tokens"] for r in one_batch] == [r["tokens"] for r in one_at_a_time]
    for a, b in zip(one_batch, one_at_a_time):
        assert np.allclose(a["logprobs"], b["logprobs"], atol=1e-4)
    # It sampled: at temperature 1.5 some token differs from the greedy choice.
    assert any(r["tokens"] != ref["tokens"] for r, ref in zip(one_batch, generated["reference"]))
