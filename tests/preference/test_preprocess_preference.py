"""tools/preprocess_preference.py: every layout rendered through a chat format into pairs of sequences
(prompt + chosen, then prompt + rejected) with reply-only masks; bad rows counted and reported by line;
--strict; long pairs fitted into one row; nothing existing overwritten."""

import importlib.util
import json

import numpy as np
import pytest
from launch import REPO

from megatron_ext.data.chat_formats import format_tokenizer, get_chat_format
from megatron_ext.data.tokenizers import train_sentencepiece

FORMAT = "chatml"  # its special tokens are not in the tokenizer: added and recorded


def _tool():
    spec = importlib.util.spec_from_file_location("preprocess_preference", REPO / "tools" / "preprocess_preference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref_tok")
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join((REPO / "data" / "corpus" / "english.jsonl").read_text().splitlines()[:40]) + "\n")
    return train_sentencepiece([str(corpus)], str(root / "sp"), vocab_size=400, num_threads=1)


GOOD = [
    # line 1: PKU-SafeRLHF, response_1 is the safe one
    {"prompt": "How can I hurt someone?", "response_0": "Hit them hard.", "response_1": "Please don't; talk to them.",
     "is_response_0_safe": False, "is_response_1_safe": True, "safer_response_id": 1},
    # line 2: PKU-SafeRLHF with equal labels: filtered
    {"prompt": "Tell me a joke.", "response_0": "A pun.", "response_1": "A riddle.",
     "is_response_0_safe": True, "is_response_1_safe": True, "safer_response_id": 0},
    # line 3: prompt layout with a system line
    {"system": "Be kind.", "prompt": "Say hello.", "chosen": "Hello there, friend!", "rejected": "Go away."},
    # line 4: conversations layout, multi-turn
    {"chosen": [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four."},
                {"role": "user", "content": "And times three?"}, {"role": "assistant", "content": "Twelve."}],
     "rejected": [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four."},
                  {"role": "user", "content": "And times three?"}, {"role": "assistant", "content": "Seven."}]},
]
BAD = [
    ({"prompt": "Where is the sun?", "rejected": "Nowhere."}, "missing 'chosen'"),
    ({"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."}, "identical"),
    ({"prompt": "word " * 200, "chosen": "ok", "rejected": "no"}, "prompt of"),
    ("{not json", "not valid JSON"),
]


def write_input(path, rows):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def read_sequences(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ids, masks = IndexedDataset(prefix), IndexedDataset(prefix + "_loss_mask")
    return [(np.asarray(ids[i]).tolist(), np.asarray(masks[i]).tolist()) for i in range(len(ids))]


def expected(fmt, tok, prompt, reply):
    """The format's own rendering of prompt + reply, its mask cut to the final reply."""
    ids, mask = fmt.render(prompt + [{"role": "assistant", "content": reply}], tok)
    n = len(fmt.render_prompt(prompt, tok))
    return list(ids), [0] * n + list(mask[n:])


def test_layouts_render_pairs_with_reply_only_masks(sp_model, tmp_path, capsys):
    rows = [GOOD[0], GOOD[1], BAD[0][0], GOOD[2], BAD[1][0], GOOD[3], BAD[2][0], BAD[3][0]]
    src = write_input(tmp_path / "pairs.jsonl", rows)
    out = str(tmp_path / "out" / "pref")
    rc = _tool()(["--input", src, "--chat-format", FORMAT, "--tokenizer-type", "SentencePieceTokenizer",
                  "--tokenizer-model", sp_model, "--seq-length", "256", "--output-prefix", out, "--also-sft"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "3 pairs (6 sequences" in captured.out and "4 bad, 1 filtered" in captured.out
    for lineno, (_, why) in zip((3, 5, 7, 8), BAD):   # the bad rows' line numbers in the input
        assert f"pairs.jsonl:{lineno}: " in captured.err and why in captured.err.split(f"pairs.jsonl:{lineno}: ")[1]
    assert "filtered 1: both replies safe" in captured.err

    fmt = get_chat_format(FORMAT)
    tok, specials = format_tokenizer(fmt, "SentencePieceTokenizer", sp_model)
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    pairs = [([user(GOOD[0]["prompt"])], "Please don't; talk to them.", "Hit them hard."),
             ([{"role": "system", "content": "Be kind."}, user("Say hello.")], "Hello there, friend!", "Go away."),
             (GOOD[3]["chosen"][:-1], "Twelve.", "Seven.")]
    sequences = read_sequences(out + "_preference")
    assert len(sequences) == 2 * len(pairs)
    for k, (prompt, chosen, rejected) in enumerate(pairs):
        assert sequences[2 * k] == expected(fmt, tok, prompt, chosen)
        assert sequences[2 * k + 1] == expected(fmt, tok, prompt, rejected)
        assert sum(sequences[2 * k][1]) > 0
    # The multi-turn prompt's earlier reply ("Four.") is context: masked out although SFT would train it.
    full_ids, full_mask = fmt.render(GOOD[3]["chosen"], tok)
    assert sum(full_mask) > sum(sequences[4][1])
    info = json.loads((tmp_path / "out" / "pref_preference.json").read_text())
    assert info["kind"] == "preference" and info["pairs"] == 3 and info["bad"] == 4 and info["filtered"] == 1
    assert info["chat_format"] == FORMAT and info["special_tokens"] == list(specials) and info["seq_length"] == 256
    # --also-sft: the chosen conversations, as tools/preprocess_sft.py would render them.
    sft = read_sequences(out + "_conversation")
    assert sft == [tuple(map(list, fmt.render(p + [{"role": "assistant", "content": c}], tok))) for p, c, _ in pairs]
    assert json.loads((tmp_path / "out" / "pref_conversation.json").read_text())["kind"] == "sft"


def test_strict_stops_at_the_first_bad_row_and_nothing_is_overwritten(sp_model, tmp_path, capsys):
    src = write_input(tmp_path / "pairs.jsonl", [GOOD[2], BAD[1][0], BAD[0][0]])
    out = str(tmp_path / "pref")
    common = ["--input", src, "--chat-format", FORMAT, "--tokenizer-type", "SentencePieceTokenizer",
              "--tokenizer-model", sp_model, "--seq-length", "128", "--output-prefix", out]
    assert _tool()(common + ["--strict"]) == 2
    err = capsys.readouterr().err
    assert "pairs.jsonl:2: 'chosen' and 'rejected' are identical" in err and "(--strict)" in err
    assert not list(tmp_path.glob("pref_*"))  # no partial output left behind
    assert _tool()(common) == 0
    written = {p.name: p.read_bytes() for p in tmp_path.glob("pref_*")}
    assert len(written) == 5
    capsys.readouterr()
    assert _tool()(common) == 2
    assert "already exists; nothing is overwritten" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.glob("pref_*")} == written


def test_long_pairs_are_cut_to_one_row_or_dropped(sp_model, tmp_path, capsys):
    long_reply = "This reply goes on and on about many things. " * 12
    row = {"prompt": "Talk.", "chosen": long_reply, "rejected": "Short."}
    src = write_input(tmp_path / "pairs.jsonl", [row])
    common = ["--input", src, "--chat-format", FORMAT, "--tokenizer-type", "SentencePieceTokenizer",
              "--tokenizer-model", sp_model, "--seq-length", "96"]
    assert _tool()(common + ["--output-prefix", str(tmp_path / "cut")]) == 0
    assert "1 truncated" in capsys.readouterr().out
    (c_ids, c_mask), (r_ids, r_mask) = read_sequences(str(tmp_path / "cut_preference"))
    assert len(c_ids) - 1 + len(r_ids) - 1 == 96           # exactly one row's positions
    fmt = get_chat_format(FORMAT)
    tok, _ = format_tokenizer(fmt, "SentencePieceTokenizer", sp_model)
    full = expected(fmt, tok, [{"role": "user", "content": "Talk."}], long_reply)
    assert c_ids == full[0][:len(c_ids)] and c_mask == full[1][:len(c_ids)]   # the chosen reply's tail was cut
    assert (r_ids, r_mask) == expected(fmt, tok, [{"role": "user", "content": "Talk."}], "Short.")
    assert _tool()(common + ["--output-prefix", str(tmp_path / "drop"), "--overlong", "drop"]) == 2
    assert "no usable pair" in capsys.readouterr().err
