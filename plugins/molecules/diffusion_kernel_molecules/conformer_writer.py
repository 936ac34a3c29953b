"""How ``diffusion-kernel generate`` saves conformers: one SDF (or XYZ) file holding every
conformer, or a folder with one SDF file per conformer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffusion_kernel.outputs import OutputWriter


class ConformerWriter(OutputWriter):
    """Writes a pipeline's ``molecules`` (RDKit molecules with conformers); a sample is one
    conformer."""

    suffixes = (".sdf", ".xyz")
    sample_suffix = ".sdf"
    description = "conformers"

    def samples(self, value: Any) -> Sequence[Any]:
        from diffusion_kernel.errors import PipelineError
        from rdkit import Chem

        from .processing.molecule_processor import conformer_positions, with_conformers

        if not all(isinstance(m, Chem.Mol) for m in value):
            raise PipelineError("conformers are written from RDKit molecules; call the pipeline "
                                "with output_type='mol'")
        return [with_conformers(m, conformer_positions(m, [c.GetId()]))
                for m in value for c in m.GetConformers()]

    def write_file(self, samples: Sequence[Any], path: Path) -> None:
        from .processing.molecule_processor import sdf_text, xyz_text

        text = xyz_text(samples) if path.suffix.lower() == ".xyz" else sdf_text(samples)
        path.write_text(text)

    def write_sample(self, sample: Any, path: Path) -> None:
        from .processing.molecule_processor import sdf_text

        path.write_text(sdf_text(sample))
