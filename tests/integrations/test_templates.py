"""Templated text back into turns and a response (OpenRLHF's query strings)."""

from __future__ import annotations

import pytest

from moerm.integrations.templates import split_query

CHATML_PROMPT = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
LLAMA3_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]


@pytest.mark.parametrize(
    ("prompt", "ending", "template"),
    [
        (CHATML_PROMPT, "It is 4.<|im_end|>\n<|im_end|><|im_end|>", "chatml"),
        (LLAMA3_PROMPT, "It is 4.<|eot_id|><|end_of_text|>", "llama3"),
    ],
)
def test_templated_query_with_and_without_its_prompt(prompt, ending, template):
    for given in (prompt, None):
        split = split_query(prompt + ending, given)
        assert (split.messages, split.response, split.template) == (TURNS, "It is 4.", template)


def test_plain_text_needs_its_prompt():
    split = split_query("Say hi. Hello there!</s>", "Say hi.")
    assert split.messages == [{"role": "user", "content": "Say hi."}]
    assert split.response == "Hello there!"
    assert split.template == "plain"
    with pytest.raises(ValueError, match="send prompts"):
        split_query("Say hi. Hello there!")


def test_a_query_without_a_response_is_refused():
    with pytest.raises(ValueError, match="assistant turn"):
        split_query(CHATML_PROMPT)
    with pytest.raises(ValueError, match="nothing after its prompt"):
        split_query(CHATML_PROMPT + "<|im_end|>", CHATML_PROMPT)


def test_a_query_that_does_not_start_with_its_prompt_is_parsed_whole():
    split = split_query(CHATML_PROMPT + "4<|im_end|>", "a different prompt")
    assert (split.messages, split.response) == (TURNS, "4")
