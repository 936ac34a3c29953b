"""The checks every text-conditioned pipeline makes on its prompt arguments, whatever it makes
(images, sound...): one of ``prompt`` / ``prompt_embeds``, prompts of the right type, negative
prompts that match them, embeddings of one shape; and the texts of the unconditional prompts of
classifier-free guidance. Imports no torch."""

from __future__ import annotations

from typing import Any

from .errors import PipelineError


def is_prompt(value: Any) -> bool:
    """A str, or a non-empty list of str."""
    return isinstance(value, str) or (isinstance(value, list) and len(value) > 0
                                      and all(isinstance(v, str) for v in value))


def check_prompts(prompt: Any, prompt_embeds: Any, negative_prompt: Any = None,
                  negative_prompt_embeds: Any = None, *,
                  negative_of_same_kind: bool = False) -> int:
    """Validate a pipeline's prompt arguments; return the number of prompts. Raises a
    ``PipelineError`` saying what to pass instead.

    Exactly one of ``prompt`` (a str or a non-empty list of str) and ``prompt_embeds`` (a tensor,
    one row per prompt); at most one of ``negative_prompt`` and ``negative_prompt_embeds``; a list
    of negative prompts has one per prompt; the two embeddings have one shape. A single str
    ``negative_prompt`` serves every prompt, unless ``negative_of_same_kind``: then it must be a
    str for a str prompt and a list for a list (Stable Diffusion's rule)."""
    if (prompt is None) == (prompt_embeds is None):
        raise PipelineError("pass exactly one of prompt and prompt_embeds (got "
                            f"{'both' if prompt is not None else 'neither'})")
    if prompt is not None and not is_prompt(prompt):
        raise PipelineError(f"prompt must be a str or a list of str (at least one), got "
                            f"{type(prompt).__name__}")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise PipelineError("pass at most one of negative_prompt and negative_prompt_embeds")
    batch = (1 if isinstance(prompt, str) else len(prompt)) if prompt is not None \
        else prompt_embeds.shape[0]
    if negative_prompt is not None:
        _check_negative_prompt(negative_prompt, prompt, batch, negative_of_same_kind)
    if prompt_embeds is not None and negative_prompt_embeds is not None and \
            prompt_embeds.shape != negative_prompt_embeds.shape:
        raise PipelineError(f"prompt_embeds {tuple(prompt_embeds.shape)} and "
                            f"negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} must "
                            f"have the same shape")
    return batch


def _check_negative_prompt(negative_prompt: Any, prompt: Any, batch: int,
                           same_kind: bool) -> None:
    if not same_kind and not is_prompt(negative_prompt):
        raise PipelineError(f"negative_prompt must be a str or a list of str, got "
                            f"{type(negative_prompt).__name__}")
    if same_kind and (not is_prompt(negative_prompt) or (
            prompt is not None and isinstance(prompt, str) != isinstance(negative_prompt, str))):
        raise PipelineError(
            f"negative_prompt must be of the same kind as prompt (a str for a str, a list of "
            f"{batch} str for a list), got {type(negative_prompt).__name__}")
    if not isinstance(negative_prompt, str) and len(negative_prompt) != batch:
        raise PipelineError(f"negative_prompt has {len(negative_prompt)} entries but there are "
                            f"{batch} prompts; give one negative prompt per prompt"
                            + ("" if same_kind else " (or a single str for all)"))


def negative_texts(negative_prompt: str | list[str] | None, batch: int) -> list[str]:
    """The unconditional prompts of classifier-free guidance for ``batch`` prompts: the empty
    prompt for each without a ``negative_prompt``, a str repeated, a list as given."""
    if negative_prompt is None:
        return [""] * batch
    return [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
