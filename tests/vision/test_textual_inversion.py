"""Textual inversion embeddings: diffusers' multi-vector files, A1111's safetensors and pickles
give diffusers' images; unloading restores tokenizer and embeddings; bad files change nothing."""

import numpy as np
import pytest
import torch
from diffusion_kernel.errors import CheckpointError, PipelineError, UnsafeCheckpointError
from diffusion_kernel_vision.pipelines.stable_diffusion import StableDiffusionPipeline
from safetensors.torch import save_file

from . import tiny
from .tiny import single_thread  # noqa: F401

TOL = 1e-4
PROMPT = "a <cat-toy> cat"


@pytest.fixture(scope="module")
def ours():
    return tiny.load_ours(StableDiffusionPipeline, tiny.stable_diffusion_folder())


@pytest.fixture(scope="module")
def ref():
    return tiny.load_reference("StableDiffusionPipeline", tiny.stable_diffusion_folder())


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    """The same two vectors in the three file formats."""
    root = tmp_path_factory.mktemp("embeddings")
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    (root / "diffusers").mkdir()
    save_file({"<cat-toy>": vectors}, root / "diffusers" / "learned_embeds.safetensors")
    save_file({"emb_params": vectors}, root / "a1111.safetensors")
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors},
                "name": "<cat-toy>", "step": 3000}, root / "a1111.pt")
    return root


@pytest.fixture(autouse=True)
def _unloaded(ours, ref):
    yield
    for pipe in (ours, ref):
        pipe.unload_textual_inversion()


def run(pipe, prompt=PROMPT):
    return pipe(prompt, num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def test_a_multi_vector_diffusers_embedding_gives_the_reference_image(ours, ref, embeddings):
    before = run(ours)
    ours.load_textual_inversion(embeddings / "diffusers")
    ref.load_textual_inversion(str(embeddings / "diffusers"))
    assert ours.maybe_convert_prompt(PROMPT, ours.tokenizer) == "a <cat-toy> <cat-toy>_1 cat"
    mine = run(ours)
    np.testing.assert_allclose(mine, run(ref), atol=TOL)
    assert np.abs(mine - before).max() > 0.01  # the embedding changes the image


@pytest.mark.parametrize("fmt", ["a1111.safetensors", "a1111.pt"])
def test_a1111_embeddings_give_the_same_image(ours, ref, embeddings, fmt):
    ref.load_textual_inversion(str(embeddings / "diffusers"))
    extra = {"allow_pickle": True} if fmt.endswith(".pt") else {}
    ours.load_textual_inversion(embeddings / fmt, token="<cat-toy>", **extra)
    np.testing.assert_allclose(run(ours), run(ref), atol=TOL)


def test_a_pickle_is_refused_unless_allowed_and_names_the_opt_in(ours, embeddings):
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        ours.load_textual_inversion(embeddings / "a1111.pt")
    ours.load_textual_inversion(embeddings / "a1111.pt", allow_pickle=True)  # name from file
    assert "<cat-toy>_1" in ours.tokenizer.get_vocab()


def test_unloading_restores_tokenizer_and_embeddings(ours, embeddings):
    length = len(ours.tokenizer)
    weight = ours.text_encoder.get_input_embeddings().weight.detach().clone()
    ours.load_textual_inversion(embeddings / "diffusers")
    ours.load_textual_inversion(torch.ones(32), token="<one>")
    assert len(ours.tokenizer) == length + 3
    ours.unload_textual_inversion("<cat-toy>")  # one token: the others keep their vectors
    assert len(ours.tokenizer) == length + 2  # <cat-toy>_1 and <one> are left
    ids = ours.tokenizer.convert_tokens_to_ids(["<cat-toy>_1", "<one>"])
    rows = ours.text_encoder.get_input_embeddings().weight
    assert ids == [length, length + 1] and torch.equal(rows[length + 1], torch.ones(32))
    ours.unload_textual_inversion()
    assert len(ours.tokenizer) == length
    assert torch.equal(ours.text_encoder.get_input_embeddings().weight, weight)


def test_bad_embeddings_are_refused_and_change_nothing(ours, embeddings, tmp_path):
    save_file({"<wide>": torch.zeros(1, 768)}, tmp_path / "wide.safetensors")
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 64)},
              tmp_path / "sdxl.safetensors")
    data = (embeddings / "diffusers" / "learned_embeds.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-40])
    cases = [
        (tmp_path / "wide.safetensors", {}, CheckpointError, "dimension 768"),
        (embeddings / "diffusers", {"token": "cat</w>"}, PipelineError, "already in"),
        (embeddings / "a1111.safetensors", {}, PipelineError, "token="),
        (tmp_path / "sdxl.safetensors", {}, CheckpointError, "SDXL"),
        (tmp_path / "cut.safetensors", {}, CheckpointError, "truncated"),
        (embeddings / "a1111.pt", {}, UnsafeCheckpointError, "allow_pickle"),
    ]
    before = run(ours)
    length = len(ours.tokenizer)
    weight = ours.text_encoder.get_input_embeddings().weight.detach().clone()
    for source, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            ours.load_textual_inversion(source, **kwargs)
        assert len(ours.tokenizer) == length, source
        assert torch.equal(ours.text_encoder.get_input_embeddings().weight, weight), source
        np.testing.assert_array_equal(run(ours), before, err_msg=str(source))
