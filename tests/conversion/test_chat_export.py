"""Export for chat (issue 12 item 8): tools/convert_to_hf.py writes the run's tokenizer with its added special
tokens at the trainer's ids, tokenizer_config.json's chat_template and generation_config.json's end of reply.

The reference is transformers itself: for every named chat format and three kinds of run tokenizer (a
SentencePiece model file, a LLaMA-style Hugging Face directory, a GPT-NeoX-style byte-level BPE directory),
`AutoTokenizer.from_pretrained(export).apply_chat_template(...)` must give exactly the ids
data/chat_formats.py's render() gives with the trainer's tokenizer (data/tokenizers.py), which are the ids the
model was fine-tuned on. The checkpoints are a one-layer LLaMA imported in-process, with the run's tokenizer
flags written into common.pt as a fine-tuning run records them."""

import importlib.util
import json
import shutil

import pytest
import torch
from conversion_helpers import load_common, save_common
from launch import REPO, run_pretrain

from megatron_ext.checkpoint.convert import ConversionError, hf_to_megatron, megatron_to_hf
from megatron_ext.data.tokenizers import build_tokenizer, train_sentencepiece

FORMATS = ("crystalchat", "amberchat", "dclm-it", "mamba-gpt", "chatml")
KINDS = ("sentencepiece", "hf-llama", "hf-bytelevel")
ROWS = 512  # embedding rows of the tiny model: base vocabularies of 400 plus the formats' tokens, padded

CONVERSATIONS = (
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name two colours."},
     {"role": "assistant", "content": "Red and blue."},
     {"role": "user", "content": "And a third?"},
     {"role": "assistant", "content": "Green."}],
    [{"role": "user", "content": "  Spaces around,\nand a second line.  "},
     {"role": "assistant", "content": "def f(x):\n    return x  # naïve 🙂\n"}],
)


def _corpus(tmp_path):
    lines = (REPO / "data" / "corpus" / "english.jsonl").read_text().splitlines()[:40]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def run_tokenizers(tmp_path_factory):
    """kind -> (tokenizer_type, tokenizer_model) of the three kinds of run tokenizer, 400 ids each."""
    from transformers import LlamaTokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    corpus = _corpus(root)
    sp_model = train_sentencepiece([str(corpus)], str(root / "sp"), vocab_size=400, num_threads=1)
    llama = root / "hf-llama"  # what an import of a LLaMA-family model carries (transformers' own conversion)
    llama.mkdir()
    shutil.copy2(sp_model, llama / "tokenizer.model")
    LlamaTokenizer.from_pretrained(str(llama)).save_pretrained(str(llama))
    spec = importlib.util.spec_from_file_location("train_tokenizer", REPO / "tools" / "train_tokenizer.py")
    train_tokenizer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tokenizer)
    train_tokenizer.train_neox_bpe([str(corpus)], str(root / "hf-bytelevel"), vocab_size=400)
    return {"sentencepiece": ("SentencePieceTokenizer", sp_model),
            "hf-llama": ("HuggingFaceTokenizer", str(llama)),
            "hf-bytelevel": ("HuggingFaceTokenizer", str(root / "hf-bytelevel"))}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A one-layer LLaMA with ROWS embedding rows, imported to a Megatron checkpoint (no tokenizer of its own)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=ROWS, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(root / "hf")
    hf_to_megatron(str(root / "hf"), str(root / "mg"), progress=False)
    return root / "mg"


def _run_checkpoint(imported, directory, tokenizer, special_tokens=None, chat_format=None):
    """A copy of the imported checkpoint that records a fine-tuning run's tokenizer flags and chat format."""
    shutil.copytree(imported, directory)
    common = load_common(directory / "iter_0000000")
    common["args"].update(tokenizer_type=tokenizer[0], tokenizer_model=tokenizer[1], vocab_pad_to=ROWS,
                          special_tokens=",".join(special_tokens) if special_tokens else None, chat_format=chat_format)
    save_common(directory / "iter_0000000", common)
    return directory


def _needed_tokens(fmt, tokenizer) -> list[str]:
    """The --special-tokens a fine-tuning run in FMT records: the format's tokens the base tokenizer lacks
    (tools/preprocess_sft.py's choice, data/chat_formats.py's format_tokenizer)."""
    from megatron_ext.data.chat_formats import format_tokenizer

    return format_tokenizer(fmt, *tokenizer, vocab_pad_to=ROWS)[1]


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", FORMATS)
def test_exported_chat_template_gives_the_trained_ids(imported, run_tokenizers, tmp_path, capsys, name, kind):
    from transformers import AutoTokenizer

    from megatron_ext.data.chat_formats import get_chat_format

    fmt = get_chat_format(name)
    specials = _needed_tokens(fmt, run_tokenizers[kind])
    run = _run_checkpoint(imported, tmp_path / "run", run_tokenizers[kind], specials, chat_format=name)
    megatron_to_hf(str(run), str(tmp_path / "hf"), progress=False)  # the format: the run's recorded one
    assert "warning" not in capsys.readouterr().err  # the export's own check agreed too
    trainer = build_tokenizer(*run_tokenizers[kind], special_tokens=specials or None, vocab_pad_to=ROWS)
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)

    # Every token the run added, at the id it trained with; the tokenizer fits the model's rows.
    assert {t: hf.convert_tokens_to_ids(t) for t in specials} == {t: trainer.vocab[t] for t in specials}
    assert len(hf) <= json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == ROWS
    assert "chat_template" in json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())

    rendered = 0
    for messages in CONVERSATIONS:
        try:
            ids, mask = fmt.render(messages, trainer)
        except ValueError:  # a turn the format does not have (a system message)
            continue
        rendered += 1
        assert _ids(hf.apply_chat_template(messages, tokenize=True)) == list(ids), (name, kind, messages)
        prompt = fmt.render_prompt(messages[:-1], trainer)
        assert _ids(hf.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True)) == \
            list(prompt), (name, kind, messages)
        # The end of reply is a trained token of the reply it ends.
        eor = trainer.vocab[fmt.end_of_reply]
        assert any(i == eor and m == 1 for i, m in zip(ids, mask)), (name, kind)
    assert rendered >= 2

    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == trainer.vocab[fmt.end_of_reply]
    assert hf.convert_ids_to_tokens(generation["eos_token_id"]) == fmt.end_of_reply
    if trainer.bos >= 0:
        assert generation["bos_token_id"] == trainer.bos


@pytest.mark.parametrize("kind", ("hf-llama", "hf-bytelevel"))
def test_hf_format_exports_the_directory_template_with_the_added_tokens(imported, run_tokenizers, tmp_path, capsys,
                                                                        kind):
    """--chat-format hf: the run's tokenizer directory's own chat_template (rendered by transformers in training
    too), exported with the run's added tokens; transformers gives the trained ids."""
    from transformers import AutoTokenizer

    from megatron_ext.data.chat_formats import get_chat_format

    directory = tmp_path / "tokenizer"
    source = AutoTokenizer.from_pretrained(run_tokenizers[kind][1], local_files_only=True)
    source.chat_template = get_chat_format("chatml").chat_template
    source.save_pretrained(directory)
    tokenizer = ("HuggingFaceTokenizer", str(directory))
    specials = ["<|im_start|>", "<|im_end|>"]
    run = _run_checkpoint(imported, tmp_path / "run", tokenizer, specials, chat_format="hf")
    megatron_to_hf(str(run), str(tmp_path / "hf"), progress=False)
    assert "warning" not in capsys.readouterr().err
    fmt = get_chat_format("hf", str(directory))
    trainer = build_tokenizer(*tokenizer, special_tokens=specials, vocab_pad_to=ROWS)
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert {t: hf.convert_tokens_to_ids(t) for t in specials} == {t: trainer.vocab[t] for t in specials}
    for messages in CONVERSATIONS:
        assert _ids(hf.apply_chat_template(messages, tokenize=True)) == fmt.render(messages, trainer)[0]
        assert _ids(hf.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True)) == \
            fmt.render_prompt(messages[:-1], trainer)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert hf.convert_ids_to_tokens(generation["eos_token_id"]) == fmt.end_of_reply
    # --chat-format none: no format's template, the directory's own one kept (as a plain copy keeps it).
    megatron_to_hf(str(run), str(tmp_path / "none"), progress=False, chat_format="none")
    saved = json.loads((tmp_path / "none" / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == source.chat_template


def test_no_chat_format_exports_the_added_tokens_and_no_template(imported, run_tokenizers, tmp_path, capsys):
    """Pretraining with --special-tokens (Crystal's): the tokens are exported, and the SentencePiece tokenizer
    encodes every text as the trainer did, spaces at the start of a piece included."""
    from transformers import AutoTokenizer

    specials = ["<|fim_prefix|>", "<|fim_middle|>", "<|im_start|>", "<|im_end|>"]
    run = _run_checkpoint(imported, tmp_path / "run", run_tokenizers["sentencepiece"], specials)
    megatron_to_hf(str(run), str(tmp_path / "hf"), progress=False)
    trainer = build_tokenizer(*run_tokenizers["sentencepiece"], special_tokens=specials, vocab_pad_to=ROWS)
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert "chat_template" not in json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert not (tmp_path / "hf" / "chat_template.jinja").exists()
    for text in ("<|fim_prefix|>def f(x):<|fim_middle|>  return x\n", " leading space", "<|im_start|> a<|im_end|>b"):
        assert hf.encode(text, add_special_tokens=False) == trainer.tokenize(text), text
    assert "warning" not in capsys.readouterr().err


def test_export_check_reports_a_template_that_renders_other_ids(imported, run_tokenizers, tmp_path, capsys,
                                                                 monkeypatch):
    """The export compares transformers' rendering with render(): a template that renders a word more is named."""
    from megatron_ext.data import chat_formats

    real = chat_formats.get_chat_format("chatml")
    broken = type("Broken", (type(real),), {"chat_template": "Hi" + real.chat_template})()
    monkeypatch.setattr(chat_formats, "get_chat_format", lambda name, tokenizer_dir=None: broken)
    tokenizer = run_tokenizers["sentencepiece"]
    run = _run_checkpoint(imported, tmp_path / "run", tokenizer, _needed_tokens(real, tokenizer), "chatml")
    megatron_to_hf(str(run), str(tmp_path / "hf"), progress=False)
    err = capsys.readouterr().err
    assert "warning: the exported tokenizer does not encode as the run's tokenizer did" in err, err
    assert "chatml conversation" in err, err


def test_a_format_the_run_never_trained_fails_before_writing(imported, run_tokenizers, tmp_path):
    run = _run_checkpoint(imported, tmp_path / "run", run_tokenizers["sentencepiece"])  # no special tokens
    with pytest.raises(ConversionError, match=r"chatml needs <\|im_start\|>.*--chat-format chatml"):
        megatron_to_hf(str(run), str(tmp_path / "hf"), progress=False, chat_format="chatml")
    assert not (tmp_path / "hf").exists()
    # A run whose tokenizer is gone cannot be exported for chat either, and says what to do.
    gone = _run_checkpoint(imported, tmp_path / "gone", ("SentencePieceTokenizer", str(tmp_path / "nope.model")),
                           chat_format="chatml")
    with pytest.raises(ConversionError, match="not available.*--chat-format none"):
        megatron_to_hf(str(gone), str(tmp_path / "hf"), progress=False)


def test_cli_chat_format_none_and_save_alias(imported, run_tokenizers, tmp_path, capsys):
    """tools/convert_to_hf.py --chat-format none: the added tokens, no template, the model layout's eos."""
    from transformers import AutoTokenizer

    from megatron_ext.data.chat_formats import get_chat_format

    spec = importlib.util.spec_from_file_location("convert_to_hf", REPO / "tools" / "convert_to_hf.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tokenizer = run_tokenizers["hf-bytelevel"]
    specials = _needed_tokens(get_chat_format("chatml"), tokenizer)
    run = _run_checkpoint(imported, tmp_path / "run", tokenizer, specials, chat_format="chatml")
    assert tool.main(["--load", str(run), "--save", str(tmp_path / "hf"), "--chat-format", "none",
                      "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert "chat_template" not in json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    trainer = build_tokenizer(*tokenizer, special_tokens=specials, vocab_pad_to=ROWS)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    source = json.loads((imported.parent / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == source["eos_token_id"] != trainer.vocab["<|im_end|>"]
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert {t: hf.convert_tokens_to_ids(t) for t in specials} == {t: trainer.vocab[t] for t in specials}


def test_fine_tuning_run_exports_the_ids_it_trained_on(run_tokenizers, tmp_path, capsys):
    """The whole path: tools/preprocess_sft.py's files, one fine-tuning iteration of pretrain_llama.py (which
    records --special-tokens and --chat-format), tools/convert_to_hf.py with no chat flag: transformers renders
    every conversation of the data to the very ids in the trained .bin file, and generation ends at the end of
    reply the data recorded."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    from transformers import AutoTokenizer

    from megatron_ext.data.sft_preprocess import preprocess_sft

    conversations = [[{"role": "system", "content": "Answer with one number."},
                      {"role": "user", "content": f"What is {i} plus {i % 3}?"},
                      {"role": "assistant", "content": f"It is {i + i % 3}."},
                      {"role": "user", "content": " And twice that?"},
                      {"role": "assistant", "content": f"{2 * (i + i % 3)}"}] for i in range(16)]
    source = tmp_path / "chat.jsonl"
    source.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    tokenizer = run_tokenizers["hf-llama"]
    prefix, _, meta = preprocess_sft(str(source), str(tmp_path / "sft"), "crystalchat", tokenizer_type=tokenizer[0],
                                     tokenizer_model=tokenizer[1], progress=False)
    run_pretrain(["--model-preset", "tiny", "--tokenizer-type", tokenizer[0], "--tokenizer-model", tokenizer[1],
                  "--special-tokens", ",".join(meta["special_tokens"]), "--chat-format", "crystalchat",
                  "--data-path", prefix, "--split", "100,0,0", "--seq-length", 128, "--micro-batch-size", 2,
                  "--global-batch-size", 2, "--train-iters", 1, "--lr", 1e-4, "--device", "cpu",
                  "--save", tmp_path / "ckpt"])
    spec = importlib.util.spec_from_file_location("convert_to_hf", REPO / "tools" / "convert_to_hf.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--load", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf"), "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    trained = IndexedDataset(prefix)
    assert len(trained) == len(conversations)
    for i, messages in enumerate(conversations):
        assert _ids(hf.apply_chat_template(messages, tokenize=True)) == trained[i].tolist(), i
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == meta["end_of_reply_id"]
