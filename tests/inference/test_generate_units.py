"""The generation pieces that need no process: token choice (filters against a float64 definition written
here, frequencies within binomial bounds, per-prompt seeded streams), when a row stops (EOS, stop strings,
length), prompts files and chat prompts (the chat format's own render_prompt and end-of-reply id)."""

import json
import math

import pytest
import torch

from megatron_ext.inference.generate import Generation, Stop, _Row
from megatron_ext.inference.prompts import encode_prompts, read_prompts_file, stop_rule
from megatron_ext.inference.sampling import Sampling, filtered_logits, next_token


def kept_reference(logits: list[float], temperature: float, top_k: int, top_p: float) -> set[int]:
    """transformers' order in float64: temperature, top-k, then the smallest set of most likely tokens whose
    probability reaches top_p."""
    scaled = [x / temperature for x in logits]
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i])
    kept = order[:top_k] if top_k else order
    z = sum(math.exp(scaled[i]) for i in kept)
    chosen, mass = [], 0.0
    for i in kept:
        chosen.append(i)
        mass += math.exp(scaled[i]) / z
        if mass >= top_p:
            break
    return set(chosen)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 0.5), (0.7, 0, 0.9), (1.3, 5, 1.0), (1.0, 8, 0.6),
                                                     (2.0, 3, 0.99), (1.0, 0, 1.0)])
def test_filters_keep_what_the_definition_keeps(temperature, top_k, top_p):
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(40, generator=generator, dtype=torch.float64) * 2
        got = filtered_logits(logits.float(), Sampling(greedy=False, temperature=temperature, top_k=top_k, top_p=top_p))
        kept = {int(i) for i in torch.nonzero(torch.isfinite(got)).flatten()}
        assert kept == kept_reference(logits.tolist(), temperature, top_k, top_p)


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.2, -1.0, -3.0])
    sampling = Sampling(greedy=False, temperature=0.8, top_k=4, top_p=0.9, seed=3)
    kept = sorted(kept_reference(logits.tolist(), 0.8, 4, 0.9))
    weights = [math.exp(logits[i].item() / 0.8) for i in kept]
    expected = {i: w / sum(weights) for i, w in zip(kept, weights)}
    draws, generator = 3000, sampling.generator(0)
    counts = [0] * len(logits)
    for _ in range(draws):
        counts[next_token(logits, sampling, generator)[0]] += 1
    for i, count in enumerate(counts):
        p = expected.get(i, 0.0)
        bound = 5 * math.sqrt(draws * p * (1 - p)) + 1e-9
        assert abs(count - draws * p) <= bound, (i, count, draws * p)


def test_logprob_is_the_models_own_and_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    token, logprob = next_token(logits, Sampling(), None)
    assert token == 1 and logprob == pytest.approx(torch.log_softmax(logits.double(), -1)[1].item(), abs=1e-6)
    # Sampled tokens report their probability before temperature and filters.
    sampling = Sampling(greedy=False, temperature=0.3, top_k=2)
    token, logprob = next_token(logits, sampling, sampling.generator(0))
    assert logprob == pytest.approx(torch.log_softmax(logits.double(), -1)[token].item(), abs=1e-6)


def test_each_prompt_has_its_own_seeded_stream():
    logits = torch.zeros(1000)
    sampling = Sampling(greedy=False, seed=7)

    def draws(seed, index):
        generator = Sampling(greedy=False, seed=seed).generator(index)
        return [next_token(logits, sampling, generator)[0] for _ in range(20)]
    assert draws(7, 0) == draws(7, 0)
    assert draws(7, 0) != draws(8, 0)
    assert draws(7, 0) != draws(7, 1)


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1)])
def test_bad_sampling_settings_are_refused(bad):
    with pytest.raises(ValueError, match="--t"):
        Sampling(greedy=False, **bad)


class WordTokenizer:
    """ids are words 'w<i>' joined by spaces; id 2 is EOS."""
    eod, bos = 2, 1

    def detokenize(self, ids):
        return " ".join("</s>" if i == 2 else f"w{i}" for i in ids)


def finish(tokens, stop, max_new=10):
    row = _Row(Generation(0, [5]), Sampling())
    for token in tokens:
        assert not row.done, "generation went on after the row finished"
        row.add(token, -0.5, WordTokenizer(), stop, max_new)
        if row.done:
            break
    return row.out


def test_rows_stop_at_eos_stop_strings_or_length():
    out = finish([7, 8, 2, 9], Stop(frozenset({2})))
    assert (out.tokens, out.text, out.finish_reason) == ([7, 8, 2], "w7 w8", "eos")
    out = finish([7, 8, 40, 41, 42], Stop(frozenset({2}), (" w4",)))  # "w7 w8 w40": cut before " w4"
    assert (out.tokens, out.text, out.finish_reason) == ([7, 8, 40], "w7 w8", "stop")
    out = finish([7, 8, 9, 10], Stop(frozenset({2}), ("w9", "w8")))  # the earliest of several strings
    assert (out.tokens, out.text, out.finish_reason) == ([7, 8], "w7 ", "stop")
    out = finish(list(range(10, 30)), Stop(frozenset({2})), max_new=4)
    assert (out.tokens, out.finish_reason, len(out.logprobs)) == ([10, 11, 12, 13], "length", 4)


def test_prompts_file_lines_and_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    good.write_text(json.dumps({"prompt": "w5 w6"}) + "\n\n" + json.dumps({"messages": chat}) + "\n")
    assert read_prompts_file(str(good)) == ["w5 w6", chat]
    cases = {'{"prompt": "a"}\nnot json\n': ":2: not JSON",
             '{"text": "a"}\n': ':1: needs exactly one of "prompt"',
             '{"messages": [{"role": "robot", "content": "x"}]}\n': ":1: each message needs a role",
             '{"prompt": 5}\n': ':1: "prompt" must be a string'}
    for text, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_prompts_file(str(bad))


def test_chat_prompts_render_with_the_format_and_stop_at_its_end_of_reply(tmp_path):
    from megatron_ext.data.chat_formats import get_chat_format
    from megatron_ext.data.tokenizers import build_tokenizer
    from word_tokenizer import save_word_tokenizer

    save_word_tokenizer(tmp_path / "tok")
    tokenizer = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tok"),
                                special_tokens=["<|im_start|>", "<|im_end|>"])
    chatml = get_chat_format("chatml")
    messages = [{"role": "user", "content": "w5 w6"}]
    encoded = encode_prompts(["w5 w6", messages], tokenizer, chatml)
    assert encoded[0] == encoded[1] == chatml.render_prompt(messages, tokenizer)
    im_end = tokenizer.tokenize("<|im_end|>")
    assert len(im_end) == 1 and im_end[0] >= 300  # an added special token, after the words
    stop = stop_rule(tokenizer, ["w9"], chatml)
    assert stop.token_ids == {2, im_end[0]} and stop.strings == ("w9",)
    assert stop_rule(tokenizer, [], None, ignore_eos=True).token_ids == frozenset()
    with pytest.raises(ValueError, match="--chat-format"):
        encode_prompts([messages], tokenizer, None)


def generate_tool():
    """tools/generate.py as a module (tools/ is not a package)."""
    import importlib.util

    from launch import REPO

    spec = importlib.util.spec_from_file_location("generate_tool", REPO / "tools" / "generate.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_command_line_mistakes_stop_before_any_process_group():
    tool = generate_tool()
    cases = {("--greedy", "--temperature", "0.7"): "--greedy cannot be combined",
             ("--max-new-tokens", "0"): "--max-new-tokens must be at least 1",
             ("--top-p", "0"): "--top-p must be in",
             ("--prompts-file", "/nonexistent/prompts.jsonl"): "No such file"}
    for flags, message in cases.items():
        source = [] if "--prompts-file" in flags else ["--prompt", "w5"]
        with pytest.raises(SystemExit, match=message):
            tool.main(["--load", "/nonexistent", *source, *flags])
    assert tool.sampling_from(tool.build_parser().parse_args(["--load", "x", "--prompt", "a"])).greedy
    sampled = tool.sampling_from(tool.build_parser().parse_args(["--load", "x", "--prompt", "a", "--top-k", "5"]))
    assert (sampled.greedy, sampled.top_k, sampled.top_p, sampled.temperature) == (False, 5, 1.0, 1.0)


def test_chat_format_defaults_to_the_checkpoints_record():
    from types import SimpleNamespace

    tool = generate_tool()
    model = SimpleNamespace(saved_args={"chat_format": "chatml"}, run=SimpleNamespace(data=SimpleNamespace(
        tokenizer_model=None)))
    parse = tool.build_parser().parse_args
    assert tool.chat_format_from(parse(["--load", "x", "--prompt", "a"]), model).name == "chatml"
    assert tool.chat_format_from(parse(["--load", "x", "--prompt", "a", "--chat-format", "none"]), model) is None
    assert tool.chat_format_from(parse(["--load", "x", "--prompt", "a", "--chat-format", "amberchat"]),
                                 model).name == "amberchat"
    model.saved_args = {}
    assert tool.chat_format_from(parse(["--load", "x", "--prompt", "a"]), model) is None
