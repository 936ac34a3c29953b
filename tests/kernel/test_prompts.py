"""diffusion_kernel.prompts.check_prompts: the prompt checks of every text-conditioned pipeline,
with the messages that tell the caller what to pass."""

import pytest
import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.prompts import check_prompts, is_prompt, negative_texts


@pytest.mark.parametrize("value,expected", [
    ("a cat", True), (["a cat", "a dog"], True), ([], False), (["a cat", 3], False),
    (("a cat",), False), (3, False), (None, False)])
def test_is_prompt_takes_a_str_or_a_non_empty_list_of_str(value, expected):
    assert is_prompt(value) is expected


@pytest.mark.parametrize("kwargs,batch", [
    (dict(prompt="a cat"), 1),
    (dict(prompt=["a", "b", "c"], negative_prompt="blurry"), 3),
    (dict(prompt=["a", "b"], negative_prompt=["c", "d"]), 2),
    (dict(prompt_embeds=torch.zeros(4, 7, 8), negative_prompt_embeds=torch.zeros(4, 7, 8)), 4),
    (dict(prompt_embeds=torch.zeros(2, 7, 8), negative_prompt=["c", "d"]), 2),
])
def test_the_number_of_prompts_is_returned(kwargs, batch):
    kwargs = {"prompt": None, "prompt_embeds": None, **kwargs}
    assert check_prompts(**kwargs) == batch


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt=None), r"pass exactly one of prompt and prompt_embeds \(got neither\)"),
    (dict(prompt_embeds=torch.zeros(1, 7, 8)), r"exactly one of .* \(got both\)"),
    (dict(prompt=3), r"prompt must be a str or a list of str \(at least one\), got int"),
    (dict(prompt=[]), r"a list of str \(at least one\), got list"),
    (dict(negative_prompt="x", negative_prompt_embeds=torch.zeros(1, 7, 8)),
     "pass at most one of negative_prompt and negative_prompt_embeds"),
    (dict(negative_prompt=5), "negative_prompt must be a str or a list of str, got int"),
    (dict(prompt=["a", "b"], negative_prompt=["c"]),
     r"negative_prompt has 1 entries but there are 2 prompts; give one negative prompt per "
     r"prompt \(or a single str for all\)"),
    (dict(prompt=None, prompt_embeds=torch.zeros(2, 7, 8),
          negative_prompt_embeds=torch.zeros(1, 7, 8)),
     r"prompt_embeds \(2, 7, 8\) and negative_prompt_embeds \(1, 7, 8\) must have the same "
     r"shape"),
])
def test_bad_prompt_arguments_say_what_to_pass(kwargs, message):
    kwargs = {"prompt": "a cat", "prompt_embeds": None, **kwargs}
    with pytest.raises(PipelineError, match=message):
        check_prompts(**kwargs)


@pytest.mark.parametrize("prompt,negative", [("a cat", ["x"]), (["a", "b"], "x"), ("a", 3)])
def test_negative_of_same_kind_wants_a_str_for_a_str_and_a_list_for_a_list(prompt, negative):
    with pytest.raises(PipelineError, match=r"negative_prompt must be of the same kind as prompt "
                                            r"\(a str for a str, a list of \d str for a list\)"):
        check_prompts(prompt, None, negative, negative_of_same_kind=True)
    if is_prompt(negative):
        assert check_prompts(prompt, None, negative) == (1 if isinstance(prompt, str) else 2)


def test_negative_of_same_kind_still_counts_the_negatives():
    with pytest.raises(PipelineError, match=r"1 entries but there are 2 prompts; give one "
                                            r"negative prompt per prompt$"):
        check_prompts(["a", "b"], None, ["c"], negative_of_same_kind=True)
    assert check_prompts(["a", "b"], None, ["c", "d"], negative_of_same_kind=True) == 2


@pytest.mark.parametrize("negative,expected", [
    (None, ["", "", ""]), ("blurry", ["blurry", "blurry", "blurry"]),
    (["a", "b", "c"], ["a", "b", "c"])])
def test_negative_texts_are_empty_repeated_or_as_given(negative, expected):
    assert negative_texts(negative, 3) == expected
