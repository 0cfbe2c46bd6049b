"""A whole-word tokenizer in Hugging Face's format for the generation tests: 'w3' .. 'w299' are ids 3..299,
<unk> 0, <s> 1, </s> 2 (EOS). Split on whitespace only, and no special token is a prefix of a word (an added
token 'w1' would be matched inside 'w10')."""

WORDS = 300


def save_word_tokenizer(directory) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(directory))
