"""Tiny model, scheduler, pipeline and processor classes built on the kernel bases, for the kernel
tests. Module name is unique across the suite because pytest puts tests/kernel on sys.path, and the
registry tests use it as a lazy ``"kernel_toys:ToyScheduler"`` target."""

from __future__ import annotations

import torch
from diffusion_kernel import hookimpl
from diffusion_kernel.modeling import ModelMixin
from diffusion_kernel.pipelines import DiffusionPipeline, ImagePipelineOutput
from diffusion_kernel.processing import ProcessorMixin
from diffusion_kernel.scheduling import SchedulerMixin, SchedulerOutput, check_option
from torch import nn


class ToyModel(ModelMixin):
    """A two-layer toy network for kernel tests."""

    _supports_gradient_checkpointing = True

    def __init__(self, in_features: int = 4, hidden: int = 8, block_sizes=(2, 3),
                 act: str = "silu"):
        super().__init__()
        self.proj_in = nn.Linear(in_features, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, in_features)
        # Where the constructor built its parameters: "meta" when from_pretrained skips init.
        self.built_on = self.proj_in.weight.device.type
        self.register_buffer("step_ids", torch.arange(3))  # persistent, integer
        self.register_buffer("scale", torch.tensor(2.0), persistent=False)  # computed, not saved
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(torch.nn.functional.silu(self.norm(self.proj_in(x)))) * self.scale


class ToyScheduler(SchedulerMixin):
    """A one-step toy scheduler: x <- x - eta * model_output."""

    _compatibles = ("ToyOtherScheduler", "NotInstalledScheduler")

    def __init__(self, num_train_timesteps: int = 100, eta: float = 0.1,
                 prediction_type: str = "epsilon", trained_betas=None):
        check_option("prediction_type", prediction_type, ("epsilon", "v_prediction"),
                     type(self).__name__)
        self.timesteps = None
        self.num_inference_steps = None

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.linspace(self.config.num_train_timesteps - 1, 0,
                                        num_inference_steps, device=device).round().long()

    def step(self, model_output, timestep, sample, generator=None) -> SchedulerOutput:
        self._require_timesteps()
        self._check_model_output(model_output, sample)
        return SchedulerOutput(prev_sample=sample - self.config.eta * model_output)


class ToyOtherScheduler(SchedulerMixin):
    """Another toy scheduler that shares ``num_train_timesteps`` with ToyScheduler."""

    _compatibles = ("ToyScheduler",)

    def __init__(self, num_train_timesteps: int = 1000, use_karras_sigmas: bool = False):
        pass


class ToyProcessor(ProcessorMixin):
    """Scales tensors in and out."""

    def __init__(self, scale: float = 2.0):
        pass

    def preprocess(self, data, **kwargs):
        return torch.as_tensor(data, dtype=torch.float32) * self.config.scale

    def postprocess(self, tensor, **kwargs):
        return (tensor / self.config.scale).tolist()


class ToyPipeline(DiffusionPipeline):
    """Denoises random vectors with ToyModel and a scheduler."""

    _callback_tensor_inputs = ("latents", "noise_pred")

    def __init__(self, unet: ToyModel, scheduler: SchedulerMixin, guidance: float = 1.0):
        self.register_modules(unet=unet, scheduler=scheduler)
        self.guidance = guidance

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, num_inference_steps: int = 3, generator=None,
                 callback_on_step_end=None, callback_on_step_end_tensor_inputs=("latents",)):
        self.check_callback_inputs(callback_on_step_end_tensor_inputs)
        latents = torch.randn(batch_size, self.unet.config.in_features, generator=generator,
                              dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            noise_pred = self.unet(latents)
            latents = self.scheduler.step(noise_pred, t, latents).prev_sample
            replaced = self.step_end(callback_on_step_end, i, t,
                                     callback_on_step_end_tensor_inputs,
                                     {"latents": latents, "noise_pred": noise_pred})
            latents = replaced.get("latents", latents)
        return ImagePipelineOutput(images=latents)


class ToyTextPipeline(DiffusionPipeline):
    """A pipeline with a transformers text encoder beside a kernel model."""

    def __init__(self, text_encoder, unet: ToyModel, scheduler: SchedulerMixin,
                 safety_checker=None):
        self.register_modules(text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                              safety_checker=safety_checker)

    _optional_components = ("safety_checker",)


class ToyPlugin:
    """Registers the toys: ToyModel eagerly (a class), the rest lazily ("module:attr")."""

    @hookimpl
    def register_models(self, register):
        register(ToyModel, aliases=("toy",))

    @hookimpl
    def register_schedulers(self, register):
        register("kernel_toys:ToyScheduler", aliases=("toy-sched",),
                 presets={"toy-v": {"prediction_type": "v_prediction", "eta": 0.5}})
        register("kernel_toys:ToyOtherScheduler", aliases=("toy-other",))

    @hookimpl
    def register_pipelines(self, register):
        register("kernel_toys:ToyPipeline", aliases=("toy-pipe",))
        register("kernel_toys:ToyTextPipeline")

    @hookimpl
    def register_processors(self, register):
        register("kernel_toys:ToyProcessor", aliases=("toy-proc",),
                 summary="Scales tensors in and out.")
