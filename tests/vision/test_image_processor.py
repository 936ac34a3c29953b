"""VaeImageProcessor: PIL / numpy / torch in and out, sizes rounded to the VAE factor,
normalisation, masks, the diffusers config fields, and errors; checked against diffusers 0.42.1."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.image_processor import VaeImageProcessor as Reference
from diffusion_kernel.errors import ConfigError, PipelineError
from diffusion_kernel_vision.processing.image_processor import VaeImageProcessor


def picture(height=37, width=45, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    data = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return PIL.Image.fromarray(data.squeeze(-1) if channels == 1 else data)


def test_config_fields_and_defaults_match_reference():
    reference = {k: v for k, v in Reference().config.items() if not k.startswith("_")}
    assert VaeImageProcessor().config.to_dict() == reference


def test_pil_image_is_resized_down_to_a_multiple_of_the_vae_factor_like_reference():
    ours = VaeImageProcessor().preprocess(picture())
    theirs = Reference().preprocess(picture())
    assert ours.shape == (1, 3, 32, 40)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_explicit_height_and_width_resize_like_reference():
    ours = VaeImageProcessor().preprocess([picture(), picture(seed=1)], height=24, width=16)
    theirs = Reference().preprocess([picture(), picture(seed=1)], height=24, width=16)
    assert ours.shape == (2, 3, 24, 16)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_pil_numpy_and_torch_inputs_give_the_same_normalised_tensor():
    image = picture(32, 32)
    array = np.asarray(image, dtype=np.float32) / 255.0
    processor = VaeImageProcessor()
    from_pil = processor.preprocess(image)
    from_np = processor.preprocess(array)
    from_pt = processor.preprocess(torch.from_numpy(array).permute(2, 0, 1))
    torch.testing.assert_close(from_np, from_pil)
    torch.testing.assert_close(from_pt, from_pil)
    assert from_pil.min() >= -1 and from_pil.max() <= 1 and from_pil.min() < -0.9


def test_numpy_and_tensor_batches_are_resized_like_reference():
    batch = np.random.default_rng(0).random((2, 20, 27, 3), dtype=np.float32)
    ours, theirs = VaeImageProcessor().preprocess(batch), Reference().preprocess(batch)
    assert ours.shape == (2, 3, 16, 24)
    torch.testing.assert_close(ours, theirs)


def test_latents_pass_through_untouched():
    latents = torch.randn(2, 4, 8, 8)
    assert VaeImageProcessor().preprocess(latents) is latents


def test_masks_are_grayscale_binarized_and_not_normalised_like_reference():
    options = dict(do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    mask = picture(32, 32, mode="L")
    ours = VaeImageProcessor(**options).preprocess(mask)
    theirs = Reference(**options).preprocess(mask)
    assert ours.shape == (1, 1, 32, 32)
    assert set(ours.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(ours, theirs)
    array_mask = np.asarray(mask, dtype=np.float32) / 255.0
    torch.testing.assert_close(VaeImageProcessor(**options).preprocess(array_mask), theirs)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_postprocess_matches_reference(output_type):
    images = torch.randn(2, 3, 8, 8) * 1.5  # some values out of [-1, 1]: clamped
    ours = VaeImageProcessor().postprocess(images, output_type)
    theirs = Reference().postprocess(images, output_type)
    if output_type == "pil":
        assert [np.asarray(i).tolist() for i in ours] == [np.asarray(i).tolist() for i in theirs]
    elif output_type == "np":
        np.testing.assert_array_equal(ours, theirs)
    else:
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_postprocess_denormalizes_only_the_images_asked_for():
    images = torch.full((2, 3, 2, 2), -1.0)
    out = VaeImageProcessor().postprocess(images, "pt", do_denormalize=[True, False])
    assert out[0].eq(0).all() and out[1].eq(-1).all()


def test_processor_config_round_trips_through_a_folder(tmp_path):
    VaeImageProcessor(vae_scale_factor=16, resample="bicubic").save_pretrained(tmp_path)
    loaded = VaeImageProcessor.from_pretrained(tmp_path)
    assert loaded.config.vae_scale_factor == 16 and loaded.config.resample == "bicubic"
    assert (tmp_path / "config.json").exists()


@pytest.mark.parametrize("call,error,message", [
    (lambda p: p.postprocess(torch.zeros(1, 3, 2, 2), "jpeg"), PipelineError,
     "unknown output_type 'jpeg'"),
    (lambda p: p.preprocess(torch.full((1, 3, 8, 8), -0.5)), PipelineError,
     r"values must lie in \[0, 1\]"),
    (lambda p: p.preprocess([picture(), np.zeros((8, 8, 3))]), PipelineError,
     "list of one of those kinds"),
    (lambda p: p.preprocess("image.png"), PipelineError, "must be a PIL image"),
    (lambda p: VaeImageProcessor(do_convert_rgb=True, do_convert_grayscale=True), ConfigError,
     "cannot both be True"),
    (lambda p: VaeImageProcessor(resample="cubic"), ConfigError, "unknown resample 'cubic'"),
], ids=["output-type", "negative-values", "mixed-kinds", "a-path", "rgb-and-gray", "resample"])
def test_bad_input_raises_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call(VaeImageProcessor())
