"""StableDiffusionPipeline: parity with diffusers 0.42.1 on one tiny checkpoint saved by diffusers,
per-image generators, guidance, callbacks, output types, memory options and argument errors."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.pipelines import DiffusionPipeline
from diffusion_kernel_vision.pipelines.stable_diffusion import StableDiffusionPipeline

from . import tiny
from .tiny import single_thread  # noqa: F401

TOL = 1e-4
SCHEDULERS = [
    ("DDIMScheduler", {}),
    ("EulerDiscreteScheduler", {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    ("EulerAncestralDiscreteScheduler", {}),
    ("LMSDiscreteScheduler", {}),
    ("PNDMScheduler", {"skip_prk_steps": True}),
]


def seeded(*seeds):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return gens[0] if len(gens) == 1 else gens


@pytest.fixture(scope="module")
def folder():
    return tiny.stable_diffusion_folder()


@pytest.fixture(scope="module")
def ours(folder):
    return tiny.load_ours(StableDiffusionPipeline, folder)


@pytest.fixture(scope="module")
def ref(folder):
    return tiny.load_reference("StableDiffusionPipeline", folder)


@pytest.fixture(autouse=True)
def _fresh_schedulers(ours, ref):
    """Each test starts from the checkpoint's DDIM scheduler."""
    ours.scheduler, ref.scheduler = tiny.scheduler_pair(
        "DDIMScheduler", tiny.scheduler_config(tiny.stable_diffusion_folder()))


def run(pipe, prompt="a cat", **kwargs):
    kwargs = {"num_inference_steps": 3, "output_type": "np", "generator": seeded(0), **kwargs}
    return pipe(prompt, **kwargs).images


@pytest.mark.parametrize("name,options", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
def test_images_match_reference_for_scheduler(ours, ref, name, options):
    ours.scheduler, ref.scheduler = tiny.scheduler_pair(
        name, tiny.scheduler_config(tiny.stable_diffusion_folder()), **options)
    mine, theirs = run(ours), run(ref)
    assert mine.shape == (1, 32, 32, 3)
    assert mine.std() > 0.01  # a real image, not a constant
    np.testing.assert_allclose(mine, theirs, atol=TOL)


def test_negative_prompt_and_several_images_per_prompt_match_reference(ours, ref):
    kwargs = dict(prompt=["a cat", "the dog"], negative_prompt=["the", "cat"],
                  num_images_per_prompt=2, guidance_scale=5.0)
    np.testing.assert_allclose(run(ours, **kwargs), run(ref, **kwargs), atol=TOL)


def test_eta_matches_reference(ours, ref):
    mine = run(ours, generator=seeded(7), eta=0.5)
    np.testing.assert_allclose(mine, run(ref, generator=seeded(7), eta=0.5), atol=TOL)
    assert np.abs(mine - run(ours, generator=seeded(7))).max() > 1e-3  # eta matters


@pytest.mark.parametrize("phi", [0.7, 1.0])
def test_guidance_rescale_matches_reference(ours, ref, phi):
    kwargs = dict(guidance_scale=12.0, guidance_rescale=phi)
    mine = run(ours, **kwargs)
    np.testing.assert_allclose(mine, run(ref, **kwargs), atol=TOL)
    assert np.abs(mine - run(ours, guidance_scale=12.0)).max() > 1e-3  # the rescale acts


def test_guidance_rescale_gives_the_guided_prediction_the_conditional_spread():
    from diffusion_kernel_vision.pipelines.stable_diffusion_common import rescale_guidance

    cond = torch.randn(2, 4, 8, 8, generator=seeded(1))
    guided = 3.0 * torch.randn(2, 4, 8, 8, generator=seeded(2)) + 0.5
    full = rescale_guidance(guided, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    half = rescale_guidance(guided, cond, 0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * guided)
    assert torch.equal(rescale_guidance(guided, cond, 0.0), guided)


def test_clip_skip_uses_the_normalised_hidden_state_before_the_last_layer(ours):
    # (the reference cannot be asked here: diffusers 0.42.1 looks for .text_model, which
    # transformers 5 no longer has)
    tokens = ours.tokenizer(["a cat"], padding="max_length", max_length=tiny.MAX_TOKENS,
                            return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = ours.text_encoder(tokens, output_hidden_states=True).hidden_states[-2]
        expected = ours.text_encoder.final_layer_norm(hidden)
    embeds, _ = ours.encode_prompt("a cat", torch.device("cpu"), 1, False, clip_skip=1)
    torch.testing.assert_close(embeds, expected)
    plain, _ = ours.encode_prompt("a cat", torch.device("cpu"), 1, False)
    assert (plain - embeds).abs().max() > 1e-3


def test_generator_list_matches_reference(ours, ref):
    mine = run(ours, prompt=["a cat", "the dog"], generator=seeded(3, 4))
    theirs = run(ref, prompt=["a cat", "the dog"], generator=seeded(3, 4))
    np.testing.assert_allclose(mine, theirs, atol=TOL)


def test_per_image_generators_make_images_independent_of_the_batch(ours, ref):
    # A stochastic sampler, so the scheduler's own noise must follow the generators too.
    ours.scheduler, _ = tiny.scheduler_pair(
        "EulerAncestralDiscreteScheduler", tiny.scheduler_config(tiny.stable_diffusion_folder()))
    prompts, seeds = ["a cat", "the dog"], [11, 12, 13, 14]
    batch = run(ours, prompt=prompts, num_images_per_prompt=2, generator=seeded(*seeds))
    alone = [run(ours, prompt=prompts[k // 2], generator=[seeded(s)])[0]
             for k, s in enumerate(seeds)]
    np.testing.assert_allclose(batch, np.stack(alone), atol=1e-5)
    assert np.abs(batch[0] - batch[1]).max() > 0.01  # different seeds, different images


def test_guidance_runs_one_unet_call_per_step_on_the_doubled_batch(ours):
    batches = []
    hook = ours.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        run(ours, prompt=["a cat", "the dog"], num_inference_steps=3, guidance_scale=7.5)
        assert batches == [4, 4, 4]
        batches.clear()
        run(ours, prompt=["a cat", "the dog"], num_inference_steps=3, guidance_scale=1.0)
        assert batches == [2, 2, 2]
    finally:
        hook.remove()


def test_prompt_embeds_give_the_same_images_as_the_prompt(ours):
    embeds, negative = ours.encode_prompt("a cat", torch.device("cpu"), 1, True)
    from_text = run(ours, prompt="a cat")
    from_embeds = run(ours, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative)
    np.testing.assert_allclose(from_embeds, from_text, atol=1e-6)


def test_given_latents_reproduce_the_seeded_run(ours):
    noise = torch.randn((1, 4, 16, 16), generator=seeded(0))
    np.testing.assert_allclose(run(ours, latents=noise, generator=None), run(ours), atol=1e-6)


def test_output_types_are_views_of_the_same_images(ours):
    as_np = run(ours)
    as_pt = run(ours, output_type="pt")
    as_pil = run(ours, output_type="pil")
    latent = run(ours, output_type="latent")
    assert isinstance(as_pt, torch.Tensor) and as_pt.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(as_pt.permute(0, 2, 3, 1).numpy(), as_np, atol=1e-7)
    assert isinstance(as_pil[0], PIL.Image.Image) and as_pil[0].size == (32, 32)
    np.testing.assert_array_equal(np.asarray(as_pil[0]), (as_np[0] * 255).round().astype("uint8"))
    assert latent.shape == (1, 4, 16, 16)


def test_return_dict_false_gives_images_and_no_nsfw_flags(ours):
    images, nsfw = ours("a cat", num_inference_steps=2, output_type="np", return_dict=False)
    assert images.shape == (1, 32, 32, 3) and nsfw is None
    assert ours("a cat", num_inference_steps=2).nsfw_content_detected is None


def test_callback_on_step_end_sees_each_step_and_can_replace_latents(ours):
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append((step, int(timestep), tuple(tensors["latents"].shape),
                     tuple(tensors["prompt_embeds"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = run(ours, output_type="latent", callback_on_step_end=callback,
              callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert [s[0] for s in seen] == [0, 1, 2]
    assert [s[1] for s in seen] == ours.scheduler.timesteps.tolist()
    assert seen[0][2] == (1, 4, 16, 16) and seen[0][3] == (2, tiny.MAX_TOKENS, 32)
    assert torch.count_nonzero(out) == 0


def test_callback_asking_for_unknown_tensor_is_refused(ours):
    with pytest.raises(PipelineError, match="noise_pred"):
        run(ours, callback_on_step_end=lambda *a: {},
            callback_on_step_end_tensor_inputs=["noise_pred"])


def test_model_cpu_offload_gives_the_same_images(folder):
    pipe = tiny.load_ours(StableDiffusionPipeline, folder)
    before = run(pipe)
    pipe.enable_model_cpu_offload()
    assert pipe._execution_device.type in ("cpu", "cuda")
    # accelerate's hooks sit on every model of model_cpu_offload_seq
    assert all(hasattr(getattr(pipe, n), "_hf_hook") for n in ("text_encoder", "unet", "vae"))
    np.testing.assert_allclose(run(pipe), before, atol=1e-6)
    np.testing.assert_allclose(run(pipe), before, atol=1e-6)  # hooks survive a call
    pipe.remove_all_hooks()
    assert not hasattr(pipe.unet, "_hf_hook")


def test_attention_slicing_gives_the_same_images(folder):
    pipe = tiny.load_ours(StableDiffusionPipeline, folder)
    before = run(pipe, prompt=["a cat", "the dog"])
    pipe.enable_attention_slicing("max")
    np.testing.assert_allclose(run(pipe, prompt=["a cat", "the dog"]), before, atol=1e-5)
    pipe.disable_attention_slicing()


def test_vae_slicing_and_tiling_give_the_same_images(folder):
    pipe = tiny.load_ours(StableDiffusionPipeline, folder)
    before = run(pipe, prompt=["a cat", "the dog"])
    pipe.vae.enable_slicing()
    np.testing.assert_allclose(run(pipe, prompt=["a cat", "the dog"]), before, atol=1e-5)
    pipe.vae.disable_slicing()


def test_pipeline_level_vae_switches_reach_the_vae(folder):
    pipe = tiny.load_ours(StableDiffusionPipeline, folder)
    before = run(pipe, prompt=["a cat", "the dog"])
    pipe.enable_vae_slicing()
    pipe.enable_vae_tiling()
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    np.testing.assert_allclose(run(pipe, prompt=["a cat", "the dog"]), before, atol=1e-5)
    pipe.disable_vae_slicing()
    pipe.disable_vae_tiling()
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling


def test_freeu_images_match_reference_and_disable_restores(ours, ref):
    plain = run(ours)
    freeu = dict(s1=0.9, s2=0.2, b1=1.5, b2=1.6)
    ours.enable_freeu(**freeu)
    ref.enable_freeu(**freeu)
    try:
        mine = run(ours)
        np.testing.assert_allclose(mine, run(ref), atol=TOL)
        assert np.abs(mine - plain).max() > 1e-3
    finally:
        ours.disable_freeu()
        ref.disable_freeu()
    np.testing.assert_array_equal(run(ours), plain)


def test_xformers_switch_warns_that_attention_already_uses_sdpa(ours):
    before = run(ours)
    with pytest.warns(UserWarning, match="scaled_dot_product_attention"):
        ours.enable_xformers_memory_efficient_attention()
    ours.disable_xformers_memory_efficient_attention()
    np.testing.assert_array_equal(run(ours), before)


def test_saved_pipeline_loads_in_reference_with_the_same_images(ours, tmp_path):
    ours.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["safety_checker"] == [None, None]
    reloaded = tiny.load_reference("StableDiffusionPipeline", tmp_path / "saved")
    np.testing.assert_allclose(run(reloaded), run(ours), atol=TOL)


def test_base_class_from_pretrained_picks_the_pipeline_class(folder):
    pipe = tiny.load_ours(DiffusionPipeline, folder)
    assert type(pipe) is StableDiffusionPipeline


def test_safety_checker_in_model_index_is_accepted_and_not_loaded(folder, tmp_path):
    copy = tmp_path / "with-checker"
    shutil.copytree(folder, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    index["requires_safety_checker"] = True
    (copy / "model_index.json").write_text(json.dumps(index))
    pipe = tiny.load_ours(StableDiffusionPipeline, copy)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    out = pipe("a cat", num_inference_steps=2, output_type="np")
    assert out.nsfw_content_detected is None and out.images.shape == (1, 32, 32, 3)


# Argument errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    (dict(height=36), "multiples of 8"),
    (dict(prompt=["a cat", "the dog"], generator=seeded(1, 2, 3)), "3 generators for 2 images"),
    (dict(prompt="a cat", negative_prompt=["the"]), "same kind as prompt"),
    (dict(prompt=["a cat", "the dog"], negative_prompt=["the"]), "1 entries but there are 2"),
    (dict(output_type="jpeg"), "unknown output_type 'jpeg'"),
    (dict(prompt=None), "exactly one of prompt and prompt_embeds"),
    (dict(prompt=3), "str or a list of str"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), r"needs \(1, 4, 16, 16\)"),
    (dict(guidance_rescale=1.5), "guidance_rescale must be between 0 and 1"),
], ids=["size", "generators", "negative-kind", "negative-length", "output-type", "no-prompt",
        "prompt-type", "latents-shape", "guidance-rescale"])
def test_bad_arguments_raise_a_pipeline_error_naming_the_fix(ours, kwargs, message):
    prompt = kwargs.pop("prompt", "a cat")
    with pytest.raises(PipelineError, match=message):
        run(ours, prompt=prompt, **kwargs)


def test_tests_run_on_our_own_models_and_schedulers(ours):
    """The parity tests above compare OUR components with the reference (not the reference with
    itself): only the text encoder and tokenizer come from transformers."""
    libraries = {name: type(c).__module__.split(".")[0] for name, c in ours.components.items()
                 if c is not None}
    assert libraries == {"vae": "diffusion_kernel_vision", "unet": "diffusion_kernel_vision",
                         "scheduler": "diffusion_kernel_schedulers",
                         "text_encoder": "transformers", "tokenizer": "transformers"}


def test_swapping_the_scheduler_from_its_config_matches_the_reference_swap(ours, ref):
    import diffusers
    from diffusion_kernel import EulerAncestralDiscreteScheduler

    ours.scheduler = EulerAncestralDiscreteScheduler.from_config(ours.scheduler.config)
    ref.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(ref.scheduler.config)
    assert type(ours.scheduler).__module__.startswith("diffusion_kernel")
    assert ours.scheduler.config.beta_schedule == "scaled_linear"  # the schedule carried over
    np.testing.assert_allclose(run(ours), run(ref), atol=TOL)
