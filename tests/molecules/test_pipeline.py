"""MoleculeConformerPipeline: outputs, seeds, schedulers, save/load, and bad input refused before
any sampling."""

import pytest
import torch
from diffusion_kernel import registry
from diffusion_kernel.errors import ModelInputError, PipelineError
from diffusion_kernel.pipelines import DiffusionPipeline
from diffusion_kernel.scheduling import scheduler_from_name
from rdkit import Chem

STEPS = 8


def seeded(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_returns_molecules_with_the_asked_conformers(tiny_pipeline):
    out = tiny_pipeline("CCO", num_conformers=3, num_inference_steps=STEPS,
                        generator=torch.Generator().manual_seed(0))
    (mol,) = out.molecules
    assert mol.GetNumAtoms() == 9 and mol.GetNumConformers() == 3
    assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == "CCO"
    assert mol.GetConformer(0).Is3D()


def test_positions_output_is_centred_per_conformer(tiny_pipeline):
    (pos,) = tiny_pipeline(["CC(=O)O"], num_conformers=2, num_inference_steps=STEPS,
                           output_type="pos").molecules
    assert pos.shape == (2, 8, 3) and pos.dtype == torch.float32
    assert pos.mean(dim=1).abs().max() < 1e-5
    assert torch.isfinite(pos).all()


def test_same_generator_same_conformers(tiny_pipeline):
    def run():
        return tiny_pipeline("CCO", num_conformers=2, num_inference_steps=STEPS,
                             generator=torch.Generator().manual_seed(7), output_type="pos")[0][0]

    assert torch.equal(run(), run())


def test_conformer_k_depends_on_its_own_generator_only(tiny_pipeline):
    both = tiny_pipeline("CCO", num_conformers=2, num_inference_steps=STEPS,
                         generator=seeded(11, 12), output_type="pos").molecules[0]
    second = tiny_pipeline("CCO", num_conformers=1, num_inference_steps=STEPS,
                           generator=seeded(12), output_type="pos").molecules[0]
    assert (both[1] - second[0]).abs().max() < 1e-5


def test_several_molecules_split_the_generators_in_order(tiny_pipeline):
    out = tiny_pipeline(["O", "CCO"], num_conformers=2, num_inference_steps=STEPS,
                        generator=seeded(1, 2, 3, 4), output_type="pos").molecules
    alone = tiny_pipeline("CCO", num_conformers=2, num_inference_steps=STEPS,
                          generator=seeded(3, 4), output_type="pos").molecules[0]
    assert [p.shape for p in out] == [(2, 3, 3), (2, 9, 3)]
    assert (out[1] - alone).abs().max() < 1e-5


def test_the_global_term_options_change_the_result(tiny_pipeline):
    def run(**options):
        return tiny_pipeline("CCO", num_inference_steps=STEPS, output_type="pos",
                             generator=torch.Generator().manual_seed(0), **options)[0][0]

    plain = run()
    assert torch.equal(run(w_global=1.0, global_start_sigma=float("inf")), plain)
    assert not torch.allclose(run(w_global=0.3), plain)
    assert not torch.allclose(run(global_start_sigma=0.5), plain)
    clipped = run(clip_pos=0.5)
    assert clipped.abs().max() <= 0.5 + 1e-6


def test_refine_steps_continue_from_the_last_scheduler_step(tiny_pipeline):
    """refine_steps=k is the chain without them followed by k steps x <- x - s * eps(x, s) at the
    schedule's smallest noise level s, each conformer re-centred."""
    from diffusion_kernel_molecules.pipelines.conformer import sigmas_at

    def run(refine_steps):
        return tiny_pipeline("CCO", num_conformers=2, num_inference_steps=STEPS,
                             output_type="pos", generator=seeded(0, 1),
                             refine_steps=refine_steps)[0][0]

    x = run(0)
    s = sigmas_at(tiny_pipeline.scheduler.alphas_cumprod, torch.zeros(1))[0]
    graph = tiny_pipeline.processor.graph(tiny_pipeline.processor.molecule("CCO")).repeat(2)
    for _ in range(2):
        eps = tiny_pipeline.model(x.reshape(-1, 3), graph, s).sample.reshape(x.shape)
        x = x - s * eps
        x = x - x.mean(dim=1, keepdim=True)
    assert (run(2) - x).abs().max() < 1e-5
    assert not torch.allclose(run(2), run(0))


def test_a_refine_step_lands_a_model_that_knows_the_clean_positions_on_them(tiny_pipeline):
    """With a stand-in model whose noise estimate is exact for one clean geometry,
    eps = (x - x_0) / sigma, one refine step returns x_0 wherever the chain ended."""
    from types import SimpleNamespace

    clean = torch.randn(9, 3, generator=torch.Generator().manual_seed(2))
    clean = clean - clean.mean(dim=0)

    class Oracle(torch.nn.Module):
        config = tiny_pipeline.model.config

        def check_elements(self, atom_type):
            pass

        def forward(self, pos, graph, sigma, global_branch=None):
            return SimpleNamespace(local_sample=(pos - clean.repeat(2, 1)) / sigma,
                                   global_sample=None)

    pipe = registry.pipelines.get("MoleculeConformerPipeline")(
        model=Oracle(), scheduler=tiny_pipeline.scheduler)
    pipe.set_progress_bar_config(disable=True)
    (pos,) = pipe("CCO", num_conformers=2, num_inference_steps=3, output_type="pos",
                  generator=seeded(0, 1), refine_steps=1).molecules
    assert (pos - clean).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["ddim", "dpm++2m", "euler"])
def test_other_schedulers_swap_in(tiny_pipeline, name):
    tiny_pipeline.scheduler = scheduler_from_name(name, tiny_pipeline.scheduler.config)
    (pos,) = tiny_pipeline("CCO", num_conformers=2, num_inference_steps=STEPS,
                           output_type="pos").molecules
    assert torch.isfinite(pos).all() and pos.shape == (2, 9, 3)


def test_saves_and_loads_as_a_diffusers_pipeline_folder(tiny_pipeline, tmp_path):
    import json

    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["model"] == ["diffusers", "GeoDiffModel"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=STEPS, output_type="pos")
    assert torch.equal(loaded("CCO", generator=seeded(5), **kwargs)[0][0],
                       tiny_pipeline("CCO", generator=seeded(5), **kwargs)[0][0])


class CountingModel(torch.nn.Module):
    """Wraps a model and counts its calls: bad input must be refused before the first."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls, self.config = model, 0, model.config

    def check_elements(self, atom_type):
        self.inner.check_elements(atom_type)

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.mark.parametrize("molecules,kwargs,error,message", [
    (["CCO", "C1CC"], {}, PipelineError, "cannot parse SMILES 'C1CC'"),
    (["CCO", "CCS"], {}, ModelInputError, r"contains \['S'\]"),
    (["CCO", "CCO.O"], {}, PipelineError, "2 disconnected fragments"),
    ("CCO", {"num_conformers": 0}, PipelineError, "num_conformers must be a positive integer"),
    ("CCO", {"num_inference_steps": 0}, PipelineError, "num_inference_steps must be"),
    ("CCO", {"output_type": "pil"}, PipelineError, "unknown output_type 'pil'"),
    ("CCO", {"refine_steps": -1}, PipelineError, "refine_steps must be a non-negative integer"),
    ("CCO", {"generator": seeded(1, 2, 3)}, PipelineError, "3 generators for 1 molecule"),
    ([], {}, PipelineError, "no molecule given"),
], ids=["unparsable", "element", "disconnected", "zero-conformers", "zero-steps", "output-type",
        "refine-steps", "generators", "empty"])
def test_bad_input_is_refused_before_any_sampling(tiny_pipeline, molecules, kwargs, error,
                                                  message):
    counting = CountingModel(tiny_pipeline.model)
    pipe = registry.pipelines.get("MoleculeConformerPipeline")(model=counting,
                                                                scheduler=tiny_pipeline.scheduler)
    options = {"num_conformers": 2, "num_inference_steps": STEPS, **kwargs}
    with pytest.raises(error, match=message):
        pipe(molecules, **options)
    assert counting.calls == 0


def test_a_clipping_scheduler_is_refused(tiny_pipeline):
    tiny_pipeline.scheduler = registry.schedulers.get("DDPMScheduler").from_config(
        tiny_pipeline.scheduler.config, clip_sample=True)
    with pytest.raises(PipelineError, match="clip_sample=False"):
        tiny_pipeline("CCO", num_inference_steps=STEPS)
