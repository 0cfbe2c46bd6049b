"""tools/preprocess_sft.py: the files it writes read back (megatron-core's IndexedDataset) to exactly the ids
and loss masks render() gives for each usable record, in input order, whatever the worker count; bad records
are skipped and reported by line (--strict: fatal, nothing written); nothing is overwritten unasked."""

import importlib.util
import json
import os

import numpy
import pytest
from launch import REPO
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ext.data.chat_formats import format_tokenizer, get_chat_format
from megatron_ext.data.conversations import conversation
from megatron_ext.data.preprocess import PreprocessError
from megatron_ext.data.sft_preprocess import output_files, preprocess_sft
from megatron_ext.data.tokenizers import build_tokenizer, train_sentencepiece

BAD = {  # line -> (record text, reason)
    7: ('{"messages": [{"role": "user", "content": "unanswered"}]}', "no_assistant_turn"),
    50: ('{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}',
         "roles_out_of_order"),
    300: ('{"conversations": [{"from": "narrator", "value": "x"}]}', "unknown_role"),
    301: ('{"instruction": "  ", "output": "x"}', "empty_content"),
    400: ('{"messages": [{"role": "user"', "not_json"),
}
BLANK = 123


def _record(i: int) -> dict:
    """Record i of the input, cycling through the four layouts (some with a system prompt, some multi-turn)."""
    q, a = f"Question {i}: what is {i} plus {i % 7}?", f"It is {i + i % 7}."
    kind = i % 4
    if kind == 0:
        msgs = ([{"role": "system", "content": "Answer briefly."}] if i % 8 == 0 else []) + [
            {"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if i % 3 == 0:
            msgs += [{"role": "user", "content": "And doubled?"}, {"role": "assistant", "content": str(2 * i)}]
        return {"messages": msgs}
    if kind == 1:
        return {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
    if kind == 2:
        return {"instruction": q, "input": "Show the sum." if i % 2 else "", "output": a}
    return {"prompt": q, "response": a}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join((REPO / "data" / "corpus" / "english.jsonl").read_text().splitlines()[:40]) + "\n")
    model = train_sentencepiece([str(corpus)], str(root / "sp"), vocab_size=400, num_threads=1)
    lines, good = [], []
    for lineno in range(1, 601):  # 600 lines: several of the workers' 256-record batches
        if lineno in BAD:
            lines.append(BAD[lineno][0])
        elif lineno == BLANK:
            lines.append("")
        else:
            lines.append(json.dumps(_record(lineno)))
            good.append(_record(lineno))
    path = root / "chats.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return {"root": root, "model": model, "input": str(path), "good": good}


def _run(data, prefix, **kw):
    kw.setdefault("chat_format", "crystalchat")
    return preprocess_sft(data["input"], str(prefix), tokenizer_type="SentencePieceTokenizer",
                          tokenizer_model=data["model"], progress=False, **kw)


def _read(prefix):
    tokens, mask = IndexedDataset(prefix), IndexedDataset(prefix + "_loss_mask")
    return tokens, mask


def test_files_read_back_to_render(data, tmp_path):
    prefix, stats, meta = _run(data, tmp_path / "out")
    assert prefix == str(tmp_path / "out_conversation")
    tokens, mask = _read(prefix)
    assert mask[0].dtype == numpy.uint8
    assert len(tokens) == len(mask) == len(data["good"]) == stats.conversations
    assert list(tokens.sequence_lengths) == list(mask.sequence_lengths)
    assert list(tokens.document_indices) == list(range(len(data["good"]) + 1))  # a document per conversation

    # The training run's tokenizer, from the sidecar's flags, renders the very same ids.
    fmt = get_chat_format("crystalchat")
    run_tokenizer = build_tokenizer(meta["tokenizer_type"], meta["tokenizer_model"],
                                    special_tokens=meta["special_tokens"])
    assert meta["vocab_size"] == run_tokenizer.vocab_size
    trained = 0
    for i, record in enumerate(data["good"]):
        ids, m = fmt.render(conversation(record)[0], run_tokenizer)
        assert tokens[i].tolist() == ids
        assert mask[i].tolist() == m
        trained += sum(m)
    assert meta["special_tokens"] == ["<|im_start|>", "<|im_end|>", "<|sys_start|>", "<|sys_end|>"]
    assert meta["kind"] == "sft" and meta["chat_format"] == "crystalchat" and meta["train_on_prompt"] is False
    assert meta["end_of_reply"] == "</s>" and meta["end_of_reply_id"] == run_tokenizer.eod
    assert meta["chat_template"] == fmt.chat_template
    assert (meta["conversations"], meta["trained_tokens"]) == (len(data["good"]), trained)
    assert meta["tokens"] == int(tokens.sequence_lengths.sum())
    assert meta["skipped"] == {reason: 1 for _, reason in BAD.values()}
    kinds = [list(r)[0] for r in data["good"]]  # messages / conversations / instruction / prompt
    assert meta["layouts"] == {"messages": kinds.count("messages"), "sharegpt": kinds.count("conversations"),
                               "alpaca": kinds.count("instruction"), "pair": kinds.count("prompt")}
    assert [p.split(": ")[0] for p in stats.problems] == [f"{data['input']}:{n}" for n in sorted(BAD)]


def test_worker_count_does_not_change_the_files(data, tmp_path):
    _run(data, tmp_path / "one", workers=1, chat_format="chatml")
    _run(data, tmp_path / "two", workers=2, chat_format="chatml")
    for a, b in zip(output_files(str(tmp_path / "one")), output_files(str(tmp_path / "two"))):
        if not a.endswith(".json"):
            assert open(a, "rb").read() == open(b, "rb").read(), a


def test_strict_stops_at_the_first_bad_record_and_writes_nothing(data, tmp_path):
    with pytest.raises(PreprocessError, match=rf"{data['input']}:7: no assistant turn.*\(--strict\)"):
        _run(data, tmp_path / "out", strict=True)
    assert os.listdir(tmp_path) == []


def test_existing_outputs_are_not_overwritten(data, tmp_path):
    _run(data, tmp_path / "out", chat_format="mamba-gpt")
    files = output_files(str(tmp_path / "out"))
    before = {f: open(f, "rb").read() for f in files}
    with pytest.raises(PreprocessError, match="already exists; pass --overwrite"):
        _run(data, tmp_path / "out", chat_format="chatml")
    assert {f: open(f, "rb").read() for f in files} == before
    _, _, meta = _run(data, tmp_path / "out", chat_format="chatml", overwrite=True)
    assert json.loads(open(files[-1]).read())["chat_format"] == meta["chat_format"] == "chatml"
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in files)  # no temporaries left


def _tool():
    spec = importlib.util.spec_from_file_location("preprocess_sft_tool", REPO / "tools" / "preprocess_sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_json_array_input_train_on_prompt_and_summary(data, tmp_path, capsys):
    array = tmp_path / "sharegpt.json"  # ShareGPT dumps and FastChat's data files are one JSON array
    array.write_text(json.dumps([_record(1), _record(5), {"conversations": []}]))
    code = _tool().main(["--input", str(array), data["input"], "--output-prefix", str(tmp_path / "all"),
                         "--chat-format", "amberchat", "--tokenizer-type", "SentencePieceTokenizer",
                         "--tokenizer-model", data["model"], "--train-on-prompt", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    n = len(data["good"]) + 2
    assert f"{n} conversations" in out.out and "skipped 6 records" in out.out
    assert f"{array}:3: no assistant turn" in out.out and f"{data['input']}:400: not valid JSON" in out.out
    assert "--data-path " + str(tmp_path / "all_conversation") in out.out
    tokens, mask = _read(str(tmp_path / "all_conversation"))
    assert len(tokens) == n and all(mask[i].tolist() == [1] * len(tokens[i]) for i in range(n))
    fmt = get_chat_format("amberchat")
    tokenizer, specials = format_tokenizer(fmt, "SentencePieceTokenizer", data["model"])
    assert specials == [] and tokens[1].tolist() == fmt.render(conversation(_record(5))[0], tokenizer)[0]


def test_tool_refuses_a_tokenizer_that_cannot_represent_the_format(data, tmp_path, capsys):
    code = _tool().main(["--input", data["input"], "--output-prefix", str(tmp_path / "x"), "--chat-format",
                         "chatml", "--tokenizer-type", "NullTokenizer", "--vocab-size", "100", "--no-progress"])
    assert code == 2
    assert "NullTokenizer cannot represent <|im_start|>, <|im_end|>" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_hf_format_takes_the_template_of_the_tokenizer_directory(data, tmp_path):
    """--chat-format hf with --tokenizer-model DIR: the directory's chat_template, ids and masks as
    transformers' apply_chat_template(..., return_assistant_tokens_mask=True) gives them."""
    from transformers import AutoTokenizer, LlamaTokenizer

    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.model").write_bytes(open(data["model"], "rb").read())
    hf = LlamaTokenizer.from_pretrained(str(src))
    hf.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ 'Bot:' }}{% generation %}"
                        "{{ ' ' + m['content'] + eos_token }}{% endgeneration %}{% else %}"
                        "{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endif %}{% endfor %}")
    hf.save_pretrained(tmp_path / "hf")
    prefix, stats, meta = preprocess_sft(data["input"], str(tmp_path / "out"), "hf",
                                         tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(tmp_path / "hf"),
                                         progress=False)
    assert meta["special_tokens"] == [] and meta["end_of_reply"] == "</s>"
    tokens, mask = _read(prefix)
    reference = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for i in (0, 1, 2, 3, 150, len(data["good"]) - 1):
        want = reference.apply_chat_template(conversation(data["good"][i])[0], tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
        assert tokens[i].tolist() == list(want["input_ids"]) and mask[i].tolist() == list(want["assistant_masks"])
