"""The picture in docs/molecules.md: conformers the shipped model generates for a few held-out
molecules, next to the closest reference conformer.

    OMP_NUM_THREADS=1 python benchmarks/molecules_picture.py [--out docs/molecules_conformers.png]

Each row is one test molecule: three generated conformers (seeds 0, 1, 2; the shipped sampler
settings), then the reference (ETKDG + MMFF) closest to the first. Heavy atoms only; every
conformer is aligned to that reference (symmetry-aware, as the RMSD is computed) and drawn
projected onto the reference's two principal axes, so differences in shape show as differences in
the drawing. Legends give each conformer's heavy-atom RMSD to its closest reference.
"""

from __future__ import annotations

import argparse

import numpy as np

MOLECULES = (0, 15, 26, 46)  # indices into the shipped test split: rings and chains
GENERATED = 3


def projected(mol, axes: np.ndarray, centre: np.ndarray):
    """A copy of ``mol`` whose conformer is its positions on ``axes`` (2 x 3), z = 0."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    out = Chem.Mol(mol)
    conformer = out.GetConformer()
    for i, p in enumerate((conformer.GetPositions() - centre) @ axes.T):
        conformer.SetAtomPosition(i, Point3D(float(p[0]), float(p[1]), 0.0))
    return out


def draw(out: str) -> None:
    import torch
    from diffusion_kernel.pipelines import DiffusionPipeline
    from diffusion_kernel_molecules import SHIPPED_MODEL, SHIPPED_TEST_SET
    from diffusion_kernel_molecules.datasets import ConformerSet
    from diffusion_kernel_molecules.metrics import rmsd_matrix
    from rdkit import Chem
    from rdkit.Chem import Draw, rdMolAlign

    pipe = DiffusionPipeline.from_pretrained(SHIPPED_MODEL)
    pipe.set_progress_bar_config(disable=True)
    references = ConformerSet.load(SHIPPED_TEST_SET)
    cells, legends = [], []
    for index in MOLECULES:
        reference = references.molecules[index]
        generated = pipe(reference, num_conformers=GENERATED,
                         generator=[torch.Generator().manual_seed(k) for k in range(GENERATED)]
                         ).molecules[0]
        rmsd = rmsd_matrix(generated, reference)
        closest = Chem.RemoveHs(Chem.Mol(reference, confId=int(rmsd[0].argmin())))
        positions = closest.GetConformer().GetPositions()
        centre = positions.mean(0)
        axes = np.linalg.svd(positions - centre)[2][:2]  # the reference's widest plane
        for k in range(GENERATED):
            heavy = Chem.RemoveHs(Chem.Mol(generated, confId=k))
            rdMolAlign.GetBestRMS(heavy, closest)  # moves ``heavy`` onto the reference
            cells.append(projected(heavy, axes, centre))
            legends.append(f"generated {k}: {rmsd[k].min():.2f} Å")
        cells.append(projected(closest, axes, centre))
        legends.append(Chem.MolToSmiles(closest))
    image = Draw.MolsToGridImage(cells, molsPerRow=GENERATED + 1, subImgSize=(240, 200),
                                 legends=legends)
    image.save(out)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/molecules_conformers.png")
    draw(parser.parse_args().out)


if __name__ == "__main__":
    main()
