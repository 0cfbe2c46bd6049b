"""Chat formats (issue 12 item 3) against transformers: every named format's chat_template, rendered by
transformers' apply_chat_template on a Hugging Face tokenizer that encodes as the trainer's tokenizer does,
gives the very ids and assistant masks that render() gives; the hf format equals apply_chat_template on the
directory's own tokenizer (with {% generation %}, and by prefix rendering without it); the rendered text is
the published format, character for character."""

import json
import shutil

import pytest
from launch import REPO

from megatron_ext.data.chat_formats import (CHAT_FORMATS, ChatFormatError, format_tokenizer, get_chat_format,
                                            token_ids)
from megatron_ext.data.tokenizers import build_tokenizer, train_sentencepiece

NAMED = CHAT_FORMATS[:-1]

CONVERSATIONS = (
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name two colours."},
     {"role": "assistant", "content": "Red and blue."},
     {"role": "user", "content": "And a third?"},
     {"role": "assistant", "content": "Green, of course."}],
    [{"role": "user", "content": "  Spaces around,\nand a second line.  "},
     {"role": "assistant", "content": "def f(x):\n    return x  # naïve 🙂\n"},
     {"role": "user", "content": "Why does </s> appear here?"},
     {"role": "assistant", "content": " Because the text says so. "}],
)


def _train_neox(corpus, out):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_tokenizer", REPO / "tools" / "train_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.train_neox_bpe([str(corpus)], str(out), vocab_size=400)
    return str(out)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """A SentencePiece model file and a GPT-NeoX-style byte-level BPE directory, trained on the corpus."""
    root = tmp_path_factory.mktemp("chat_tok")
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join((REPO / "data" / "corpus" / "english.jsonl").read_text().splitlines()[:40]) + "\n")
    sp = train_sentencepiece([str(corpus)], str(root / "sp"), vocab_size=400, num_threads=1)
    return {"root": root, "sentencepiece": ("SentencePieceTokenizer", sp),
            "bytelevel": ("HuggingFaceTokenizer", _train_neox(corpus, root / "neox"))}


def _reference(kind, model, specials, workdir):
    """transformers' tokenizer for the trainer's: the text between special tokens encoded as a text of its own.

    sentencepiece: transformers' own conversion of the model file (LlamaTokenizer), with its Metaspace
    pre-tokenizer (which prefixes only the start of the whole string) replaced by sentencepiece's rule, a
    dummy-prefix space before every piece (Prepend + Replace normalizers; transformers splits at added
    tokens before normalizing). byte-level BPE: the directory's tokenizer as it is."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast

    if kind == "SentencePieceTokenizer":
        d = workdir / "llama"
        d.mkdir(exist_ok=True)
        shutil.copy2(model, d / "tokenizer.model")
        spec = json.loads(LlamaTokenizer.from_pretrained(str(d)).backend_tokenizer.to_str())
        spec["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        spec["pre_tokenizer"] = None
        backend = Tokenizer.from_str(json.dumps(spec))
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    hf = AutoTokenizer.from_pretrained(model)
    hf.add_tokens(list(specials), special_tokens=True)
    return hf


@pytest.mark.parametrize("kind", ["sentencepiece", "bytelevel"])
@pytest.mark.parametrize("name", NAMED)
def test_named_format_equals_transformers_rendering_of_its_template(tokenizers, tmp_path, name, kind):
    from transformers import AutoTokenizer

    fmt = get_chat_format(name)
    tokenizer_type, model = tokenizers[kind]
    tokenizer, specials = format_tokenizer(fmt, tokenizer_type, model)
    ref = _reference(tokenizer_type, model, specials, tmp_path)
    assert [ref.convert_tokens_to_ids(t) for t in specials] == [tokenizer.special_token_ids[t] for t in specials]
    # As an export ships it: tokenizer_config.json's chat_template, loaded back by AutoTokenizer.
    ref.chat_template = fmt.chat_template
    ref.save_pretrained(tmp_path / "export")
    exported = AutoTokenizer.from_pretrained(tmp_path / "export")
    for messages in CONVERSATIONS:
        ids, mask = fmt.render(messages, tokenizer)
        out = exported.apply_chat_template(messages, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
        assert ids == list(out["input_ids"])
        assert mask == list(out["assistant_masks"])
        assert exported.apply_chat_template(messages, tokenize=False) == fmt.render_text(messages)
        # Each prompt (the conversation up to a user turn, plus the generation prompt) is what transformers
        # gives with add_generation_prompt, and a prefix of the rendered conversation.
        for k in range(len(messages)):
            if messages[k]["role"] != "assistant":
                continue
            prompt = fmt.render_prompt(messages[:k], tokenizer)
            assert prompt == list(exported.apply_chat_template(messages[:k], tokenize=True, return_dict=True,
                                                               add_generation_prompt=True)["input_ids"])
            assert ids[:len(prompt)] == prompt
        assert fmt.render(messages, tokenizer, train_on_prompt=True) == (ids, [1] * len(ids))


# The published formats, written out by hand from the sources docs/chat_formats.md cites.
AMBER_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the human's questions.")
DCLM_PROMPT = ("Below is an instruction that describes a task.\n\nWrite a response that appropriately completes "
               "the request.\n\n### Instruction:\n{instruction}\n\n### Response:")  # DCLM-1B-IT's create_prompt
TURNS = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
         {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]
SYSTEM = [{"role": "system", "content": "S"}]
EXPECTED = {
    "crystalchat": ("<s> <|sys_start|> S <|sys_end|> <|im_start|> Q1 <|im_end|> A1 <|im_start|> Q2 <|im_end|> A2</s>",
                    "<s> <|im_start|> Q1 <|im_end|>"),
    "amberchat": ("<s>S\n### Human: Q1\n### Assistant: A1</s>\n### Human: Q2\n### Assistant: A2</s>",
                  f"<s>{AMBER_SYSTEM}\n### Human: Q1\n### Assistant:"),
    "dclm-it": ("S\n\n### Instruction:\nQ1\n\n### Response:A1<|endoftext|>\n\n### Instruction:\nQ2\n\n### Response:"
                "A2<|endoftext|>", DCLM_PROMPT.format(instruction="Q1")),
    "mamba-gpt": ("<|system|>S</s><|prompt|>Q1</s><|answer|>A1</s><|prompt|>Q2</s><|answer|>A2</s>",
                  "<|prompt|>Q1</s><|answer|>"),
    "chatml": ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
               "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n",
               "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n"),
}


@pytest.mark.parametrize("name", NAMED)
def test_rendered_text_is_the_published_format(name):
    fmt = get_chat_format(name)
    full, prompt = EXPECTED[name]
    assert fmt.render_text(SYSTEM + TURNS) == full
    assert fmt.render_text(TURNS[:1], add_generation_prompt=True) == prompt
    assert fmt.end_of_reply in fmt.special_tokens


def test_card_prompts_render_exactly():
    """The model cards' own prompt strings (mamba-gpt-3b's printed prompt, DCLM-1B-IT's create_prompt)."""
    water = [{"role": "user", "content": "Why is drinking water so healthy?"}]
    assert get_chat_format("mamba-gpt").render_text(water, True) == "<|prompt|>Why is drinking water so healthy?</s><|answer|>"
    poem = [{"role": "user", "content": "Give me a poem about Sachin Tendulkar."}]
    assert get_chat_format("dclm-it").render_text(poem, True) == DCLM_PROMPT.format(instruction=poem[0]["content"])


@pytest.mark.parametrize("name", NAMED)
def test_mask_is_the_replies_and_their_end_token(tokenizers, name):
    """Trained tokens: each reply's tokens, and the end-of-reply token after the last reply."""
    fmt = get_chat_format(name)
    tokenizer, _ = format_tokenizer(fmt, *tokenizers["sentencepiece"])
    ids, mask = fmt.render(SYSTEM + TURNS, tokenizer)
    runs, current = [], None
    for i, m in zip(ids, mask):
        if m and current is None:
            current = []
            runs.append(current)
        if m:
            current.append(i)
        else:
            current = None
    assert len(runs) == 2
    end = token_ids(tokenizer)[fmt.end_of_reply]
    assert runs[1][-1] == end
    assert ids[-1] == end or name == "chatml"  # chatml ends every message with a newline
    text = tokenizer.detokenize([i for i in runs[1] if i != end])
    assert text.strip() == "A2"


@pytest.mark.parametrize("name", ["chatml", "dclm-it"])
def test_ids_are_the_trainers_tokenization_of_the_text(tokenizers, name):
    """With the format's tokens as --special-tokens, render() is the trainer's own tokenizer on the rendered
    text (data/tokenizers.py encodes the pieces between special tokens one by one, as render does)."""
    fmt = get_chat_format(name)
    tokenizer, specials = format_tokenizer(fmt, *tokenizers["sentencepiece"])
    assert specials == list(fmt.special_tokens)
    base_vocab = build_tokenizer(*tokenizers["sentencepiece"]).vocab_size
    assert [tokenizer.special_token_ids[t] for t in specials] == list(range(base_vocab, base_vocab + len(specials)))
    for messages in CONVERSATIONS[:2]:
        assert fmt.render(messages, tokenizer)[0] == tokenizer.tokenize(fmt.render_text(messages))


def test_format_tokens_the_tokenizer_has_are_not_added(tokenizers):
    assert format_tokenizer(get_chat_format("mamba-gpt"), *tokenizers["sentencepiece"])[1] == []  # </s>
    assert format_tokenizer(get_chat_format("amberchat"), *tokenizers["sentencepiece"])[1] == []  # <s>, </s>
    assert format_tokenizer(get_chat_format("dclm-it"), *tokenizers["bytelevel"])[1] == []  # <|endoftext|>
    # the user's --special-tokens come first, the format's missing ones after them
    _, specials = format_tokenizer(get_chat_format("crystalchat"), *tokenizers["sentencepiece"],
                                   special_tokens="<|fim_prefix|>,<|im_end|>")
    assert specials == ["<|fim_prefix|>", "<|im_end|>", "<|im_start|>", "<|sys_start|>", "<|sys_end|>"]


def test_format_needing_a_token_the_tokenizer_cannot_represent(tokenizers):
    chatml = get_chat_format("chatml")
    plain = build_tokenizer(*tokenizers["sentencepiece"])
    with pytest.raises(ChatFormatError, match=r"<\|im_start\|>, <\|im_end\|> as single tokens.*--special-tokens"):
        chatml.render(CONVERSATIONS[0], plain)
    null = build_tokenizer("NullTokenizer", None, vocab_size=100)
    with pytest.raises(ChatFormatError, match="NullTokenizer cannot represent"):
        format_tokenizer(chatml, "NullTokenizer", None, vocab_size=100)
    with pytest.raises(ChatFormatError, match="NullTokenizer cannot represent"):
        chatml.render(CONVERSATIONS[0], null)
    with pytest.raises(ChatFormatError, match="unknown"):
        get_chat_format("vicuna")


def test_render_refuses_a_bad_conversation(tokenizers):
    fmt = get_chat_format("chatml")
    tokenizer, _ = format_tokenizer(fmt, *tokenizers["sentencepiece"])
    with pytest.raises(ValueError, match="no assistant turn"):
        fmt.render([{"role": "user", "content": "hi"}], tokenizer)
    with pytest.raises(ValueError, match="must end with a user message"):
        fmt.render_prompt(CONVERSATIONS[0], tokenizer)


# ---- the hf format ------------------------------------------------------------------------------------------

CHATML_GENERATION = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
                     "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
                     "{% endgeneration %}{{ '\\n' }}{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}"
                     "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# The same text with the reply's newline inside the reply, and no {% generation %}: the mask comes from
# rendering prefixes, and must be that of the template with the tags around the same text.
CHATML_PLAIN = CHATML_GENERATION.replace("{% generation %}", "").replace("{% endgeneration %}{{ '\\n' }}",
                                                                          "{{ '\\n' }}")
CHATML_NEWLINE_TRAINED = CHATML_GENERATION.replace("{% endgeneration %}{{ '\\n' }}",
                                                   "{{ '\\n' }}{% endgeneration %}")


def _hf_dir(tokenizers, kind, template, name):
    """A Hugging Face tokenizer directory carrying TEMPLATE: the byte-level BPE, or transformers' own LLaMA
    conversion of the SentencePiece model (Metaspace prefixing only the start of the text)."""
    from transformers import AutoTokenizer, LlamaTokenizer

    out = tokenizers["root"] / name
    if kind == "bytelevel":
        hf = AutoTokenizer.from_pretrained(tokenizers["bytelevel"][1])
    else:
        (tokenizers["root"] / "llama_src").mkdir(exist_ok=True)
        shutil.copy2(tokenizers["sentencepiece"][1], tokenizers["root"] / "llama_src" / "tokenizer.model")
        hf = LlamaTokenizer.from_pretrained(str(tokenizers["root"] / "llama_src"))
    hf.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    hf.eos_token = "<|im_end|>"
    hf.chat_template = template
    hf.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("kind", ["bytelevel", "llama"])
def test_hf_format_equals_apply_chat_template(tokenizers, kind):
    from transformers import AutoTokenizer

    with_tags = _hf_dir(tokenizers, kind, CHATML_GENERATION, f"hf_gen_{kind}")
    plain = _hf_dir(tokenizers, kind, CHATML_PLAIN, f"hf_plain_{kind}")
    newline = _hf_dir(tokenizers, kind, CHATML_NEWLINE_TRAINED, f"hf_nl_{kind}")
    reference = AutoTokenizer.from_pretrained(with_tags)
    ref_newline = AutoTokenizer.from_pretrained(newline)
    for directory in (with_tags, plain):
        fmt = get_chat_format("hf", directory)
        assert fmt.end_of_reply == reference.eos_token and fmt.chat_template == AutoTokenizer.from_pretrained(
            directory).chat_template
        tokenizer = build_tokenizer("HuggingFaceTokenizer", directory)
        for messages in CONVERSATIONS:
            ids, mask = fmt.render(messages, tokenizer)
            want = (ref_newline if directory == plain else reference).apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            assert ids == list(want["input_ids"])
            assert mask == list(want["assistant_masks"]) and sum(mask) > 0
            prompt = fmt.render_prompt(messages[:-1], tokenizer)
            assert prompt == list(reference.apply_chat_template(messages[:-1], tokenize=True, return_dict=True,
                                                                add_generation_prompt=True)["input_ids"])


def test_hf_format_refuses_a_template_whose_replies_cannot_be_located(tokenizers):
    # The last user turn is rendered differently once a reply follows it, so the text before a reply is not
    # the prompt rendered with add_generation_prompt.
    odd = ("{% for message in messages %}{{ message['role'] + ': ' + message['content'] }}"
           "{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}{{ ' | assistant: ' }}{% endif %}")
    directory = _hf_dir(tokenizers, "bytelevel", odd, "hf_odd")
    fmt = get_chat_format("hf", directory)
    with pytest.raises(ChatFormatError, match="generation"):
        fmt.render(CONVERSATIONS[0], build_tokenizer("HuggingFaceTokenizer", directory))
    bare = tokenizers["bytelevel"][1]  # tokenizer.json only: no chat_template
    with pytest.raises(ChatFormatError, match="no chat_template"):
        get_chat_format("hf", bare)
