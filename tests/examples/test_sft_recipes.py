"""The fine-tuning recipes (examples/*_sft.sh), run end to end on CPU with SMOKE=1, all four at once: each
converts a tiny random HF base model, preprocesses conversations in its chat format, fine-tunes from the
converted weights (--pretrained-checkpoint) and exports for chat. The exported tokenizer's chat_template must
give the very ids the run trained on, and generation_config's end token the format's end of reply.

The acceptance run (issue 12): mamba_gpt_sft.sh's smoke (the demo model's shape, tiny-demo) on an arithmetic
conversation set this test writes, for 4 epochs: the masked loss falls, and the export, in transformers'
generate(), answers a training prompt in the trained format ("The answer is N." then the end of reply) where
the base model it started from does not."""

import json
import math
import random
import re
import subprocess
import sys

import pytest
import launch
from launch import REPO, free_port

from megatron_ext.data.chat_formats import get_chat_format

RECIPES = {  # script: (work directory name, chat format, HF model_type of the export)
    "amberchat_sft.sh": ("amberchat", "amberchat", "llama"),
    "crystalchat_sft.sh": ("crystalchat", "crystalchat", "crystalcoder"),
    "dclm_it_sft.sh": ("dclm_it", "dclm-it", "openlm"),
    "mamba_gpt_sft.sh": ("mamba_gpt", "mamba-gpt", "llama"),
}
ACCEPTANCE = {"SPLIT": "100,0,0", "TRAIN_EPOCHS": "4", "LR": "3e-3", "WARMUP_FRACTION": "0.05"}
ITERATION = re.compile(r"^\s*iteration\s+(\d+)/\s*(\d+)\s*\|", re.M)
ROWS = re.compile(r" > (conversations|text) (\S+): share ([\d.]+), (\d+) units in (\d+) rows per epoch \(pack\)")


def arithmetic_conversations(path, count=240, seed=5):
    """Single-turn sums, each reply in one template: learnable by a tiny model in a few dozen steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                  {"role": "assistant", "content": f"The answer is {a + b}."}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft_recipes")
    env = {**launch.subprocess_env(), "SMOKE": "1", "PYTHON": sys.executable}
    # The three SentencePiece recipes share one stand-in tokenizer (ex_smoke_tokenizer's command, run once here
    # instead of three times at once); dclm_it_sft.sh trains its GPT-NeoX-style BPE itself.
    sp = root / "sp_tokenizer"
    subprocess.run([sys.executable, "tools/train_tokenizer.py", "--input", "data/corpus/english.jsonl",
                    "data/corpus/code.jsonl", "--model-prefix", str(sp / "smoke"), "--vocab-size", "490",
                    "--workers", "2", "--max-sentences", "2000"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    conversations = arithmetic_conversations(root / "arithmetic.jsonl")
    procs = {}
    for script, (name, _, _) in RECIPES.items():
        extra = {"WORK": str(root / name), "MASTER_PORT": str(free_port())}
        if script != "dclm_it_sft.sh":
            extra["SMOKE_TOKENIZER_DIR"] = str(sp)
        if script == "mamba_gpt_sft.sh":
            extra.update(ACCEPTANCE, SFT_INPUT=str(root / "arithmetic.jsonl"))
        procs[script] = subprocess.Popen(["bash", str(REPO / "examples" / script)], cwd=REPO, env={**env, **extra},
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True)
    # AmberSafe's DPO recipe (SFT on the preferred replies, then DPO, then the export), alongside.
    (root / "ambersafe" / "tokenizer").mkdir(parents=True)
    for piece in sp.iterdir():  # the same stand-in tokenizer, so the recipe does not train another
        (root / "ambersafe" / "tokenizer" / piece.name).write_bytes(piece.read_bytes())
    procs["ambersafe_dpo.sh"] = subprocess.Popen(
        ["bash", str(REPO / "examples" / "ambersafe_dpo.sh")], cwd=REPO,
        env={**env, "WORK": str(root / "ambersafe"), "MASTER_PORT": str(free_port())}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {}
    for script, proc in procs.items():
        outputs[script] = proc.communicate(timeout=900)[0]
        assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{outputs[script][-6000:]}"
    return root, outputs, conversations


def log_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("script", sorted(RECIPES))
def test_recipe_smoke_trains_and_exports_for_chat(runs, script):
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    root, outputs, _ = runs
    name, chat_format, model_type = RECIPES[script]
    work, out = root / name, outputs[script]
    # 1. converted from the HF stand-in, fine-tuned from it at iteration 0 (weights only)
    assert (work / "converted" / "latest_checkpointed_iteration.txt").is_file()
    assert f"--pretrained-checkpoint {work}/converted" in out and f"--chat-format {chat_format}" in out
    assert re.search(r"started from --pretrained-checkpoint \S+/converted/iter_0000000 .*weights only", out), out[-3000:]
    # 2. the run's length: --train-epochs is rows per epoch over the global batch; crystalchat counts iterations
    iterations = [(int(a), int(b)) for a, b in ITERATION.findall(out)]
    total = iterations[-1][1]
    assert [i for i, _ in iterations] == list(range(1, total + 1))
    sources = ROWS.findall(out)
    assert sources and sources[0][0] == "conversations"
    global_batch = int(re.search(r"--global-batch-size (\d+)", out)[1])
    if script == "crystalchat_sft.sh":
        assert total == 3 and "--train-iters 3" in out
        # instruction data mixed with plain text by weight, every text token trained
        assert [(kind, share) for kind, _, share, _, _ in sources] == [("conversations", "0.700"), ("text", "0.300")]
    elif script == "mamba_gpt_sft.sh":
        assert "--train-epochs 4" in out
        assert abs(total - 4 * int(sources[0][4]) / global_batch) <= 1, (total, sources)
    else:
        assert "--train-epochs 1" in out and total == math.ceil(int(sources[0][4]) / global_batch), (total, sources)
    losses = [r["lm loss"] for r in log_records(work / "train_log.jsonl") if "lm loss" in r]
    assert len(losses) == total and all(0 < x < 10 for x in losses), losses
    # 3. the export for chat: the layout, the template, the end of reply, and the very ids trained on
    hf, sidecar = work / "hf", json.loads((work / "data" / "sft_conversation.json").read_text())
    assert json.loads((hf / "config.json").read_text())["model_type"] == model_type
    assert list(hf.glob("*.safetensors"))
    fmt = get_chat_format(chat_format)
    assert json.loads((hf / "tokenizer_config.json").read_text())["chat_template"] == fmt.chat_template
    assert json.loads((hf / "generation_config.json").read_text())["eos_token_id"] == sidecar["end_of_reply_id"]
    tokenizer = AutoTokenizer.from_pretrained(str(hf), trust_remote_code=False)
    assert tokenizer.convert_ids_to_tokens(sidecar["end_of_reply_id"]) == fmt.end_of_reply
    first = json.loads(open(sidecar["inputs"][0]).readline())["messages"]
    ids = tokenizer.apply_chat_template(first, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    stored = IndexedDataset(str(work / "data" / "sft_conversation"))  # kept alive: [0] is a view of its mmap
    assert list(ids) == stored[0].tolist()
    if script == "crystalchat_sft.sh":  # the chat tokens are Crystal's own ids 32018-32021 in the real tokenizer
        assert {"<|sys_start|>", "<|sys_end|>", "<|im_start|>", "<|im_end|>"} <= set(sidecar["special_tokens"])
        assert f"--special-tokens {','.join(sidecar['special_tokens'])}" in out


def test_smoke_sft_of_the_demo_model_learns_the_format(runs):
    """Acceptance: loss down, and generate() on the export replies as trained and stops at the end of reply."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, outputs, conversations = runs
    work = root / "mamba_gpt"
    out = outputs["mamba_gpt_sft.sh"]
    assert "(tiny-demo, the base-model stand-in)" in out
    losses = [r["lm loss"] for r in log_records(work / "train_log.jsonl") if "lm loss" in r]
    first, last = sum(losses[:2]) / 2, sum(losses[-3:]) / 3
    assert first > 5.0 and last < 0.25 * first, losses  # ln(490) ~ 6.2 at the random start

    tokenizer = AutoTokenizer.from_pretrained(str(work / "hf"))  # the export's: it has the chat_template

    def replies(directory):
        model = AutoModelForCausalLM.from_pretrained(str(directory), torch_dtype=torch.float32).eval()
        eos = model.generation_config.eos_token_id
        result = []
        for conversation in conversations[:4]:
            prompt = tokenizer.apply_chat_template(conversation["messages"][:1], add_generation_prompt=True,
                                                   tokenize=True)
            prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
            with torch.no_grad():
                generated = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                           eos_token_id=eos, pad_token_id=eos)
            new = generated[0, len(prompt):].tolist()
            result.append((new, eos, tokenizer.decode(new, skip_special_tokens=True).strip()))
        return result

    for new, eos, text in replies(work / "hf"):
        assert new[-1] == eos and eos not in new[:-1], (new, text)  # stopped at mamba-gpt's </s>
        assert re.fullmatch(r"The answer is \d{1,2}\.", text), text
    # the random base model it started from answers nothing of the kind
    assert not any(re.fullmatch(r"The answer is \d{1,2}\.", text) for _, _, text in replies(work / "hf_base"))


def test_ambersafe_dpo_smoke_runs_sft_then_dpo_and_exports_for_chat(runs):
    root, _, _ = runs
    work = root / "ambersafe"
    sft, dpo = log_records(work / "sft_log.jsonl"), log_records(work / "dpo_log.jsonl")
    assert any("lm loss" in r for r in sft)
    metrics = [r for r in dpo if "rewards/accuracies" in r]
    assert metrics and all(k in metrics[0] for k in ("rewards/chosen", "rewards/rejected", "rewards/margins",
                                                     "logps/chosen", "logps/rejected"))
    config = json.loads((work / "hf" / "tokenizer_config.json").read_text())
    assert config.get("chat_template")
    assert (work / "hf" / "generation_config.json").is_file()
