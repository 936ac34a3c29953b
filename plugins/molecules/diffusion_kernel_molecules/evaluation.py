"""Evaluating a conformer generator against reference ensembles, GeoDiff's protocol: for each
molecule generate ``ratio`` (2) times as many conformers as it has references, then COV/MAT
(metrics.py) per molecule, mean and median over molecules; plus the fraction of bonds within
0.1 Å of their force-field length. The same scoring serves the model and RDKit's ETKDG."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from diffusion_kernel.errors import ConfigError
from rdkit import Chem
from rdkit.Chem import AllChem

from .datasets import ConformerSet
from .metrics import bond_length_accuracy, coverage_matching, rmsd_matrix, summarize

# A conformer generator: (molecule with hydrogens, how many, seed) -> the molecule with them.
Generator = Callable[[Chem.Mol, int, int], Chem.Mol]


@dataclass
class Evaluation:
    """``summary``: COV/MAT means and medians (COV as a fraction), ``bonds_within_0.1``,
    ``conformers``, ``seconds`` (generation only) and ``conformers_per_second``;
    ``per_molecule``: one row per molecule (SMILES, COV-R, MAT-R, COV-P, MAT-P, bonds)."""

    summary: dict[str, float]
    per_molecule: list[dict] = field(default_factory=list)


def evaluate(generate: Generator, references: ConformerSet, ratio: int = 2,
             threshold: float = 0.5, seed: int = 0) -> Evaluation:
    """Score ``generate`` on every molecule of ``references`` (molecule i uses seed + i)."""
    if ratio < 1:
        raise ConfigError(f"ratio must be >= 1 (generated per reference), got {ratio}")
    rows, scores, bonds, seconds, count = [], [], [], 0.0, 0
    for i, reference in enumerate(references.molecules):
        num = ratio * reference.GetNumConformers()
        start = time.perf_counter()
        generated = generate(reference, num, seed + i)
        seconds += time.perf_counter() - start
        count += generated.GetNumConformers()
        score = coverage_matching(rmsd_matrix(generated, reference), threshold)
        bonds.append(bond_length_accuracy(generated, reference))
        scores.append(score)
        rows.append({"smiles": Chem.MolToSmiles(Chem.RemoveHs(reference)), **asdict(score),
                     "bonds_within_0.1": bonds[-1]})
    summary = {**summarize(scores), "bonds_within_0.1": float(np.mean(bonds)),
               "molecules": len(rows), "conformers": count, "seconds": seconds,
               "conformers_per_second": count / seconds if seconds else float("inf")}
    return Evaluation(summary, rows)


def pipeline_generator(pipe, num_inference_steps: int | None = None, **options) -> Generator:
    """``pipe`` as a ``Generator``: conformer k of a call with seed s uses
    ``torch.Generator().manual_seed(s * 1000 + k)``."""
    def generate(mol: Chem.Mol, num: int, seed: int) -> Chem.Mol:
        gens = [torch.Generator().manual_seed(seed * 1000 + k) for k in range(num)]
        kwargs = dict(options)
        if num_inference_steps is not None:
            kwargs["num_inference_steps"] = num_inference_steps
        return pipe(mol, num_conformers=num, generator=gens, **kwargs).molecules[0]

    return generate


def etkdg_generator(mmff: bool = False, seed_offset: int = 1000) -> Generator:
    """RDKit's ETKDGv3 (optionally MMFF94-relaxed) as a ``Generator``. Its seeds are offset from
    the references' so that it does not reproduce them."""
    def generate(mol: Chem.Mol, num: int, seed: int) -> Chem.Mol:
        out = Chem.Mol(mol)
        out.RemoveAllConformers()
        params = AllChem.ETKDGv3()
        params.randomSeed = seed + seed_offset
        AllChem.EmbedMultipleConfs(out, numConfs=num, params=params)
        if mmff:
            AllChem.MMFFOptimizeMoleculeConfs(out, maxIters=2000)
        return out

    return generate
