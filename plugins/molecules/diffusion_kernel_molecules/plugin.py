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


@hookimpl
def register_train_kinds(register):
    register("molecules", f"{_PKG}.commands:run_train",
             arguments=f"{_PKG}.commands:add_train_arguments",
             help="a GeoDiffModel on reference conformers (default: RDKit's NCI molecules)")


@hookimpl
def register_evaluate_kinds(register):
    register("molecules", f"{_PKG}.commands:run_evaluate",
             arguments=f"{_PKG}.commands:add_evaluate_arguments",
             help="COV/MAT against reference conformers (default: the shipped NCI test split)")


@hookimpl
def register_output_writers(register):
    register("molecules", f"{_PKG}.conformer_writer:ConformerWriter")


@hookimpl
def register_shipped_models(register):
    from .commands import SHIPPED_MODEL, SHIPPED_NAME

    register(SHIPPED_NAME, str(SHIPPED_MODEL),
             summary="conformers of small organic molecules (H, C, N, O, F), a GeoDiff model "
                     "trained on RDKit's NCI sample (docs/molecules.md)")
