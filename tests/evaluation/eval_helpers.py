"""Shared by the evaluation tests: a small byte-level BPE tokenizer that adds a BOS by default (as LLaMA's
Hugging Face tokenizers do), and task files in this repo's JSONL form with lm-evaluation-harness task
definitions that ask for the same log-likelihoods."""

import json
import os

WORDS = ("the cat sat on a mat while dogs ran across fields of green grass and birds sang songs about "
         "rivers mountains clouds rain snow sun moon stars night day morning evening question answer yes no "
         "maybe always never water fire earth air light dark heavy small large quick slow").split()


def save_bpe_tokenizer(directory: str, vocab_size: int = 400) -> None:
    """Byte-level BPE (spaces matter: " yes" and "yes" are different tokens) with "<s> $A" as its
    post-processor, so encode() puts a BOS first unless add_special_tokens=False."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) for i in range(200)]
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(directory)


def _sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_documents(seed: int, count: int) -> list[dict]:
    """Documents of varied shape: 2 to 4 choices of different lengths, a context ending in a space (the
    harness moves it into the continuation), one empty context (conditioned on the BOS)."""
    import random

    rng = random.Random(seed)
    docs = []
    for i in range(count):
        choices = [_sentence(rng, rng.randint(1, 5)) for _ in range(rng.randint(2, 4))]
        context = "Question: " + _sentence(rng, rng.randint(3, 10)) + "?\nAnswer:"
        if i % 5 == 3:
            context += " "
        if i == 1:
            context = ""
        docs.append({"context": context, "choices": choices, "gold": rng.randrange(len(choices))})
    return docs


def make_multiple_input_documents(seed: int, count: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    docs = []
    for _ in range(count):
        head = _sentence(rng, rng.randint(2, 6)) + " "
        options = [_sentence(rng, rng.randint(1, 3)) for _ in range(2)]
        docs.append({"contexts": [head + o for o in options], "continuation": _sentence(rng, rng.randint(2, 5)),
                     "gold": rng.randrange(2)})
    return docs


def write_jsonl(path, rows) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


# lm-evaluation-harness task definitions (YAML) over the same documents.
HARNESS_MC = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
{fewshot_files}test_split: test
{fewshot}output_type: multiple_choice
{description}doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

HARNESS_MULTIPLE_INPUT = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
test_split: test
output_type: multiple_choice
doc_to_text: !function {module}.doc_to_text
doc_to_choice: !function {module}.doc_to_choice
doc_to_target: !function {module}.doc_to_target
metric_list:
  - metric: acc
  - metric: acc_norm
"""

HARNESS_MULTIPLE_INPUT_FUNCTIONS = '''def doc_to_text(doc):
    return doc["gold"]


def doc_to_choice(doc):
    return doc["contexts"]


def doc_to_target(doc):
    return doc["continuation"]
'''


def write_harness_tasks(directory, tasks: dict) -> None:
    """tasks: name -> dict(test=path, kind="mc"|"multiple_input", fewshot=(path, n) or None, description=str)."""
    os.makedirs(directory, exist_ok=True)
    for name, spec in tasks.items():
        if spec.get("kind") == "multiple_input":
            module = f"{name}_functions"
            with open(os.path.join(directory, f"{module}.py"), "w") as f:
                f.write(HARNESS_MULTIPLE_INPUT_FUNCTIONS)
            text = HARNESS_MULTIPLE_INPUT.format(name=name, test=spec["test"], module=module)
        else:
            fewshot = spec.get("fewshot")
            text = HARNESS_MC.format(
                name=name, test=spec["test"],
                fewshot_files=f"    train: {fewshot[0]}\n" if fewshot else "",
                fewshot=(f"fewshot_split: train\nnum_fewshot: {fewshot[1]}\nfewshot_config:\n  sampler: first_n\n"
                         if fewshot else ""),
                description=f"description: {json.dumps(spec['description'])}\n" if spec.get("description") else "")
        with open(os.path.join(directory, f"{name}.yaml"), "w") as f:
            f.write(text)
