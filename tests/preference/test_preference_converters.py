"""Preference layouts -> (prompt messages, chosen, rejected): PKU-SafeRLHF's safety filter, the conversations
layout of common preference sets, the prompt layout, and the bad rows each names."""

import pytest

from megatron_ext.preference.data import BadRow, FilteredRow, pair_from_record

USER = {"role": "user", "content": "How do I pick a lock?"}


def pku(safe0, safe1, safer=0, r0="I can't help with that.", r1="Use a tension wrench and a pick."):
    return {"prompt": USER["content"], "response_0": r0, "response_1": r1, "is_response_0_safe": safe0,
            "is_response_1_safe": safe1, "safer_response_id": safer, "better_response_id": 1}


def test_pku_saferlhf_keeps_differing_labels_and_chooses_the_safe_reply():
    pair = pair_from_record(pku(True, False, safer=0))
    assert pair.prompt == (USER,)
    assert (pair.chosen, pair.rejected) == ("I can't help with that.", "Use a tension wrench and a pick.")
    # The safe reply wins whichever position it is in, and the (helpfulness) better_response_id is ignored.
    pair = pair_from_record(pku(False, True, safer=1, r0="unsafe", r1="safe"))
    assert (pair.chosen, pair.rejected) == ("safe", "unsafe")


@pytest.mark.parametrize("labels,why", [((True, True), "both replies safe"), ((False, False), "both replies unsafe")])
def test_pku_saferlhf_pairs_with_equal_labels_are_filtered_not_bad(labels, why):
    with pytest.raises(FilteredRow, match=why):
        pair_from_record(pku(*labels), layout="pku-saferlhf")


def test_pku_saferlhf_bad_rows_name_the_problem():
    row = pku(True, False)
    del row["response_1"]
    with pytest.raises(BadRow, match="missing 'response_1'"):
        pair_from_record(row)  # auto still recognises the layout from the other keys
    with pytest.raises(BadRow, match="true or false"):
        pair_from_record(pku("yes", False), layout="pku-saferlhf")


def test_conversations_layout_splits_the_shared_prefix_from_the_last_reply():
    system = {"role": "system", "content": "Be brief."}
    turn = [system, USER, {"role": "assistant", "content": "Why?"}, {"role": "user", "content": "Locked out."}]
    row = {"prompt": "ignored when the conversations carry it",
           "chosen": turn + [{"role": "assistant", "content": "Call a locksmith."}],
           "rejected": turn + [{"role": "assistant", "content": "Kick the door."}]}
    pair = pair_from_record(row)
    assert pair.prompt == tuple(turn)
    assert (pair.chosen, pair.rejected) == ("Call a locksmith.", "Kick the door.")
    # UltraFeedback-style rows whose conversations hold the reply only take the prompt key.
    pair = pair_from_record({"prompt": "Hi", "chosen": [{"role": "assistant", "content": "Hello!"}],
                             "rejected": [{"role": "assistant", "content": "Go away."}]})
    assert pair.prompt == ({"role": "user", "content": "Hi"},) and pair.chosen == "Hello!"


def test_conversations_that_differ_before_the_reply_are_bad():
    a = [USER, {"role": "assistant", "content": "A"}]
    b = [{"role": "user", "content": "another question"}, {"role": "assistant", "content": "B"}]
    with pytest.raises(BadRow, match="differ before their last message"):
        pair_from_record({"chosen": a, "rejected": b})
    with pytest.raises(BadRow, match="ends with a user turn"):
        pair_from_record({"chosen": [USER], "rejected": a})


def test_prompt_layout_strings_messages_and_system():
    pair = pair_from_record({"prompt": "Q?", "chosen": "good", "rejected": "bad", "system": "S"})
    assert pair.prompt == ({"role": "system", "content": "S"}, {"role": "user", "content": "Q?"})
    pair = pair_from_record({"messages": [USER], "chosen": {"role": "assistant", "content": "good"},
                             "rejected": "bad"})
    assert pair.prompt == (USER,) and pair.chosen == "good"


@pytest.mark.parametrize("row,message", [
    ({"prompt": "Q", "rejected": "bad"}, "missing 'chosen'"),
    ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "Q", "chosen": "", "rejected": "bad"}, "'chosen' is empty"),
    ({"chosen": "a", "rejected": "b"}, "no 'prompt' or 'messages'"),
    ({"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}, "unknown role 'bot'"),
    ({"prompt": "Q", "chosen": 3, "rejected": "b"}, "'chosen' is int"),
    ([1, 2], "not a JSON object"),
])
def test_bad_rows_say_what_is_wrong(row, message):
    with pytest.raises(BadRow, match=message):
        pair_from_record(row)
