"""Entry point of the molecules plugin: registers GeoDiffModel, the conformer pipeline and the
molecule processor by module path (imported on first use), and the ``molecules`` commands."""

from pathlib import Path

from diffusion_kernel import hookimpl
from diffusion_kernel.plugins import lazy_hook

_PKG = "diffusion_kernel_molecules"
# Defined here, not in commands.py: listing the registries (and importing the package, which
# exports them) must not import the plugin's code.
SHIPPED_MODEL = Path(__file__).parent / "shipped" / "geodiff-nci"
SHIPPED_TEST_SET = Path(__file__).parent / "data" / "nci-test.npz"
SHIPPED_NAME = "conformers"

register_models = lazy_hook(_PKG, [("GeoDiffModel", "models.geodiff", ("geodiff", "MoleculeGNN"))])
register_pipelines = lazy_hook(_PKG, [("MoleculeConformerPipeline", "pipelines.conformer",
                                       ("conformers", "geodiff-pipeline"))])
register_processors = lazy_hook(_PKG, [("MoleculeProcessor", "processing.molecule_processor",
                                        ("molecule",))])


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
    register(SHIPPED_NAME, str(SHIPPED_MODEL),
             summary="conformers of small organic molecules (H, C, N, O, F), a GeoDiff model "
                     "trained on RDKit's NCI sample (docs/molecules.md)")
