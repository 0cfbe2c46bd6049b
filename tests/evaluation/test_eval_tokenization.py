"""Request encoding against lm-evaluation-harness's own: its HF model class's loglikelihood() (TemplateLM's
context/continuation split, HFLM.tok_encode, the empty-context prefix token) runs on the tokenizer the Hugging
Face export carries, with its model-running step replaced by one that returns the encoded requests, and every
request must come out as the same ids as evaluation/scoring.py makes from the run's tokenizer: a byte-level
BPE directory whose encode() adds a BOS, and a SentencePiece model (the export converts it through
transformers: checkpoint/hf_files.py)."""

import json
import random
import types

import pytest
from eval_helpers import WORDS, make_documents, make_multiple_input_documents, save_bpe_tokenizer

from megatron_ext.data.tokenizers import build_tokenizer, train_sentencepiece
from megatron_ext.evaluation.scoring import encode_requests
from megatron_ext.evaluation.tasks import load_task, write_task


def _requests(tmp_path):
    write_task(tmp_path / "mc.jsonl", make_documents(5, 30))
    write_task(tmp_path / "mi.jsonl", make_multiple_input_documents(6, 10))
    requests = load_task(str(tmp_path / "mc.jsonl")).requests() + load_task(str(tmp_path / "mi.jsonl")).requests()
    contexts = {context for context, _ in requests}
    assert "" in contexts and any(c.endswith(" ") for c in contexts)  # both special cases are exercised
    return requests


def _harness_encoding(tokenizer_dir, requests):
    import lm_eval.models.huggingface as huggingface
    from transformers import AutoTokenizer

    lm = object.__new__(huggingface.HFLM)  # its tokenizer and settings only: no model is loaded
    lm.backend, lm.add_bos_token, lm.custom_prefix_token_id, lm.enable_thinking = "causal", None, None, False
    lm.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    lm._loglikelihood_tokens = lambda new_requests, disable_tqdm=False: new_requests
    encoded = lm.loglikelihood([types.SimpleNamespace(args=r, task_name="t") for r in requests], disable_tqdm=True)
    return [(context + continuation, len(continuation)) for _, context, continuation in encoded]


@pytest.mark.parametrize("kind", ["bpe_with_bos", "sentencepiece"])
def test_requests_encode_as_the_harness_encodes_them_on_the_export(kind, tmp_path):
    requests = _requests(tmp_path)
    if kind == "bpe_with_bos":
        save_bpe_tokenizer(tmp_path / "tok")
        ours, exported = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tok")), tmp_path / "tok"
    else:
        from megatron_ext.checkpoint.hf_files import _sentencepiece_tokenizer

        rng = random.Random(0)
        with open(tmp_path / "corpus.jsonl", "w") as f:
            for _ in range(300):
                text = "Question: " + " ".join(rng.choice(WORDS) for _ in range(20)) + "?\nAnswer: yes"
                f.write(json.dumps({"text": text}) + "\n")
        model = train_sentencepiece([str(tmp_path / "corpus.jsonl")], str(tmp_path / "sp"), 300)
        ours, exported = build_tokenizer("SentencePieceTokenizer", model), tmp_path / "export"
        exported.mkdir()
        _sentencepiece_tokenizer(model, str(exported))  # what tools/convert_to_hf.py writes
    assert encode_requests(ours, requests, max_length=10**6) == _harness_encoding(str(exported), requests)


def test_rows_longer_than_the_context_keep_their_end(tmp_path):
    save_bpe_tokenizer(tmp_path / "tok")
    tokenizer = build_tokenizer("HuggingFaceTokenizer", str(tmp_path / "tok"))
    context = "Question: " + " ".join(WORDS) + "\nAnswer:"
    ((full, n),) = encode_requests(tokenizer, [(context, " yes")], max_length=10**6)
    ((cut, m),) = encode_requests(tokenizer, [(context, " yes")], max_length=16)
    assert (cut, m) == (full[-17:], n) and len(full) > 17
    with pytest.raises(ValueError, match="request 0: the continuation has .* tokens, more than the model's context"):
        encode_requests(tokenizer, [(context, " " + " ".join(WORDS))], max_length=16)
