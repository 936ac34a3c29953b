"""Entry point of the molecules plugin: registers GeoDiffModel, the conformer pipeline and the
molecule processor by module path (imported on first use), and the ``molecules`` commands."""

from diffusion_kernel import hookimpl

_PKG = "diffusion_kernel_molecules"


@hookimpl
def register_models(register):
    register(f"{_PKG}.models.geodiff:GeoDiffModel", name="GeoDiffModel",
             aliases=("geodiff", "MoleculeGNN"))


@hookimpl
def register_pipelines(register):
    register(f"{_PKG}.pipelines.conformer:MoleculeConformerPipeline",
             name="MoleculeConformerPipeline", aliases=("conformers", "geodiff-pipeline"))


@hookimpl
def register_processors(register):
    register(f"{_PKG}.processing.molecule_processor:MoleculeProcessor",
             name="MoleculeProcessor", aliases=("molecule",))
