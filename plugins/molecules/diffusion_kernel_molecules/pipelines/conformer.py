"""MoleculeConformerPipeline: 3-D conformers of a molecule from its graph, by denoising atom
positions with GeoDiffModel (Xu et al. 2022) and any noise-prediction scheduler.

Positions are noised as x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, the schedulers' form. The
model reads positions in Ångström, x_t / sqrt(abar_t) = x_0 + sigma_t eps with
sigma_t = sqrt((1 - abar_t) / abar_t), and predicts eps. After each step every conformer is moved
back to its centroid: the model ignores translations, so the centroid only drifts with the noise
(GeoDiff re-centres the same way).

GeoDiff's sampling options, as in its code: the global term enters with weight ``w_global`` and
only once sigma_t < ``global_start_sigma``; its per-atom norm is clipped at ``clip``, the local
term's at ``clip_local``; positions are clamped to [-clip_pos, clip_pos].

After the scheduler's last step, ``refine_steps`` noise-free denoising steps
x <- x - s * eps_theta(x, s) at the schedule's smallest noise level s (sigma at t = 0): each moves
the atoms to the clean positions the model estimates (the x_0 prediction of a DDPM step, Ho et
al. 2020, eq. 15), a fixed-point iteration towards the geometry the model considers noise-free.
The chain ends with errors of a few hundredths of an Å (bond lengths, mostly) that its last steps
remove only a small fraction of; these steps remove them. GeoDiffModel reads no noise level, so
s * eps_theta is its displacement estimate whatever s is (below the global term's threshold).
With the shipped model on 20 training molecules they took the bonds within 0.1 Å of their
force-field length from about 90 % to 99.9 % and raised COV-R (docs/molecules.md, how the count
was chosen). ``refine_steps=0`` ends with the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.noise import Generators, randn
from diffusion_kernel.pipelines import DiffusionPipeline, PipelineOutput
from diffusion_kernel.sampling_loop import step_kwargs
from rdkit import Chem

from ..processing.molecule_processor import MoleculeLike, MoleculeProcessor, with_conformers

OUTPUT_TYPES = ("mol", "pos")
# The noise-free denoising steps that end sampling by default (module docstring), chosen on
# 20 training molecules with the shipped model (docs/molecules.md).
REFINE_STEPS = 50


@dataclass
class ConformerPipelineOutput(PipelineOutput):
    """``molecules``: one RDKit ``Mol`` (with hydrogens) per input molecule, holding the
    generated conformers; with ``output_type="pos"``, one (num_conformers, n_atoms, 3) float32
    tensor of positions in Ångström per molecule instead."""

    molecules: list[Any]


def clip_norm(vectors: torch.Tensor, limit: float | None) -> torch.Tensor:
    """Scale each row down to norm ``limit`` where it is longer (GeoDiff's ``clip_norm``)."""
    if limit is None:
        return vectors
    norms = vectors.norm(dim=-1, keepdim=True)
    return vectors * (limit / norms.clamp_min(limit))


def sigmas_at(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> list[float]:
    """sigma = sqrt((1 - abar) / abar) at each training timestep; a fractional one (Karras-type
    discretisations) interpolates log sigma between its neighbours."""
    abar = alphas_cumprod.double().cpu().numpy()
    log_sigmas = 0.5 * np.log((1 - abar) / abar)
    t = timesteps.double().cpu().numpy()
    return np.exp(np.interp(t, np.arange(len(log_sigmas)), log_sigmas)).tolist()


class MoleculeConformerPipeline(DiffusionPipeline):
    """``MoleculeConformerPipeline(model, scheduler)``;
    ``pipe("CCO", num_conformers=5, generator=torch.Generator().manual_seed(0)).molecules[0]`` is
    ethanol with hydrogens and five conformers."""

    _callback_tensor_inputs = ("positions",)
    generate_input = "molecule"

    def __init__(self, model: Any, scheduler: Any):
        self.register_modules(model=model, scheduler=scheduler)

    def generate_arguments(self, num_samples: int, input: Any = None,
                           num_inference_steps: int | None = None,
                           generator: list | None = None) -> dict[str, Any]:
        """For ``diffusion-kernel generate SMILES --num N``: N conformers of the molecule, one
        generator each."""
        if input is None:
            raise PipelineError("name the molecule: diffusion-kernel generate \"CCO\" ...")
        kwargs = {"molecule": input, "num_conformers": num_samples, "generator": generator}
        if num_inference_steps is not None:
            kwargs["num_inference_steps"] = num_inference_steps
        return kwargs

    @property
    def processor(self) -> MoleculeProcessor:
        return MoleculeProcessor(edge_order=self.model.config.edge_order)

    @torch.no_grad()
    def __call__(
        self,
        molecule: MoleculeLike | Sequence[MoleculeLike],
        num_conformers: int = 1,
        num_inference_steps: int | None = None,
        generator: Generators = None,
        w_global: float = 1.0,
        global_start_sigma: float | None = None,
        clip: float = 1000.0,
        clip_local: float | None = None,
        clip_pos: float | None = None,
        refine_steps: int = REFINE_STEPS,
        output_type: str = "mol",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("positions",),
    ) -> ConformerPipelineOutput | tuple:
        """Generate ``num_conformers`` conformers of each molecule (a SMILES, an RDKit ``Mol``,
        or a list of them) in ``num_inference_steps`` scheduler steps.

        ``generator``: one ``torch.Generator``, or one per conformer (molecules x conformers, in
        order; conformer k of a molecule then depends on its generator alone). ``w_global``,
        ``global_start_sigma``, ``clip``, ``clip_local``, ``clip_pos``: GeoDiff's sampling
        options (module docstring); by default the global term enters with weight 1 below the
        noise level the model was trained with it (its config's ``global_start_sigma``).
        ``refine_steps``: the noise-free denoising steps after the last scheduler step (module
        docstring; 0: none).
        ``output_type``: ``"mol"`` or ``"pos"``. ``num_inference_steps`` defaults to the count
        the model folder recommends (``default_num_inference_steps``), else 500. Every input is
        checked before any sampling."""
        items = [molecule] if isinstance(molecule, str | Chem.Mol) else list(molecule)
        num_inference_steps = self.inference_steps(num_inference_steps, 500)
        mols = self._check_inputs(items, num_conformers, num_inference_steps, generator,
                                  output_type, callback_on_step_end_tensor_inputs)
        if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or \
                refine_steps < 0:
            raise PipelineError(f"refine_steps must be a non-negative integer, got "
                                f"{refine_steps!r}")
        generators = _split_generators(generator, len(mols), num_conformers)
        options = dict(w_global=w_global, global_start_sigma=global_start_sigma, clip=clip,
                       clip_local=clip_local, clip_pos=clip_pos, refine_steps=refine_steps)
        outputs = []
        for mol, gens in zip(mols, generators):
            positions = self._sample(mol, num_conformers, num_inference_steps, gens, options,
                                     callback_on_step_end, callback_on_step_end_tensor_inputs)
            outputs.append(positions if output_type == "pos" else
                           with_conformers(mol, positions.double()))
        return ConformerPipelineOutput(outputs) if return_dict else (outputs,)

    def _check_inputs(self, items, num_conformers, num_inference_steps, generator, output_type,
                      tensor_inputs) -> list[Chem.Mol]:
        if isinstance(num_conformers, bool) or not isinstance(num_conformers, int) or \
                num_conformers < 1:
            raise PipelineError(f"num_conformers must be a positive integer, got "
                                f"{num_conformers!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise PipelineError(f"num_inference_steps must be a positive integer, got "
                                f"{num_inference_steps!r}")
        if output_type not in OUTPUT_TYPES:
            raise PipelineError(f"unknown output_type {output_type!r}; choose one of "
                                f"{list(OUTPUT_TYPES)}")
        if not items:
            raise PipelineError("no molecule given; pass a SMILES string or an RDKit Mol")
        if not hasattr(self.scheduler, "alphas_cumprod"):
            raise PipelineError(f"{type(self.scheduler).__name__} has no alphas_cumprod; the "
                                f"pipeline needs a noise-prediction scheduler with a beta "
                                f"schedule (DDPM, DDIM, DPM-Solver, Euler, ...)")
        if self.scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise PipelineError("GeoDiffModel predicts the noise; use a scheduler with "
                                "prediction_type='epsilon'")
        if self.scheduler.config.get("clip_sample") or self.scheduler.config.get("thresholding"):
            raise PipelineError("the scheduler clips or thresholds samples to +-1, which would "
                                "crush positions in Ångström: build it with clip_sample=False "
                                "and thresholding=False")
        self.check_callback_inputs(tensor_inputs)
        processor = self.processor
        mols = [processor.molecule(item) for item in items]
        for mol in mols:
            self.model.check_elements(processor.graph(mol).atom_type)
        if isinstance(generator, list | tuple) and \
                len(generator) != len(mols) * num_conformers:
            raise PipelineError(f"got {len(generator)} generators for {len(mols)} molecule(s) x "
                                f"{num_conformers} conformers; pass one per conformer, or one")
        return mols

    def _sample(self, mol, num_conformers, num_inference_steps, generator, options, callback,
                tensor_inputs) -> torch.Tensor:
        device, dtype = self._execution_device, self.dtype
        graph = self.processor.graph(mol).repeat(num_conformers).to(device)
        n = mol.GetNumAtoms()
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        x = randn((num_conformers, n, 3), generator, device, dtype) * scheduler.init_noise_sigma
        x = x - x.mean(dim=1, keepdim=True)
        sigmas = sigmas_at(scheduler.alphas_cumprod, scheduler.timesteps)
        for i, (t, sigma) in enumerate(zip(self.progress_bar(scheduler.timesteps), sigmas)):
            model_input = scheduler.scale_model_input(x, t) * (1.0 + sigma**2) ** 0.5
            eps = self._noise_estimate(model_input.reshape(-1, 3), graph, sigma, options)
            x = scheduler.step(eps.reshape(x.shape), t, x, **step_kwargs(scheduler, generator))
            x = x.prev_sample
            x = self._settle(x, options, f"step {i} (t={int(t)})")
            replaced = self.step_end(callback, i, t, tensor_inputs, {"positions": x})
            x = replaced.get("positions", x)
        s = sigmas_at(scheduler.alphas_cumprod, torch.zeros(1))[0]
        for k in range(options["refine_steps"]):  # x_0 = x - s * eps(x, s), module docstring
            eps = self._noise_estimate(x.reshape(-1, 3), graph, s, options)
            x = self._settle(x - s * eps.reshape(x.shape), options, f"refine step {k}")
        return x.float().cpu()

    @staticmethod
    def _settle(x: torch.Tensor, options: dict, where: str) -> torch.Tensor:
        """Each conformer back to its centroid, clamped to clip_pos; refuses non-finite ones."""
        x = x - x.mean(dim=1, keepdim=True)
        if options["clip_pos"] is not None:
            x = x.clamp(-options["clip_pos"], options["clip_pos"])
        if not torch.isfinite(x).all():
            raise PipelineError(f"positions became non-finite at {where}; try more inference "
                                f"steps or clip_local/clip_pos")
        return x

    def _noise_estimate(self, pos, graph, sigma, options) -> torch.Tensor:
        start = options["global_start_sigma"]
        if start is None:  # the level the model learned its global term below
            start = self.model.config.get("global_start_sigma")
        start = float("inf") if start is None else start
        use_global = sigma < start and options["w_global"] != 0
        out = self.model(pos, graph, sigma, global_branch=use_global)
        eps = clip_norm(out.local_sample, options["clip_local"])
        if out.global_sample is not None:
            eps = eps + options["w_global"] * clip_norm(out.global_sample, options["clip"])
        return eps


def _split_generators(generator: Generators, num_molecules: int, num_conformers: int):
    if isinstance(generator, list | tuple):
        return [list(generator[k * num_conformers:(k + 1) * num_conformers])
                for k in range(num_molecules)]
    return [generator] * num_molecules
