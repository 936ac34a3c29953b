"""Tiled processing of large images or latents with linear blending at the seams (the tiling of
the diffusers autoencoders): memory stays that of one tile whatever the input size."""

from __future__ import annotations

from collections.abc import Callable

import torch


def tiled(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile_in: int,
          tile_out: int, overlap_factor: float) -> torch.Tensor:
    """Apply ``function`` (which maps a ``tile_in`` tile to a ``tile_out`` tile) to overlapping
    tiles of ``x`` taken every ``tile_in * (1 - overlap_factor)`` pixels; each output tile is
    blended with its upper and left neighbours over ``tile_out * overlap_factor`` rows/columns,
    then cropped so the tiles abut."""
    stride = int(tile_in * (1 - overlap_factor))
    blend = int(tile_out * overlap_factor)
    keep = tile_out - blend
    rows = [[function(x[:, :, i:i + tile_in, j:j + tile_in])
             for j in range(0, x.shape[3], stride)]
            for i in range(0, x.shape[2], stride)]
    result_rows = []
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            # In place, so that later neighbours blend with the already blended tile.
            if i > 0:
                _blend(rows[i - 1][j], tile, blend, dim=2)
            if j > 0:
                _blend(row[j - 1], tile, blend, dim=3)
        result_rows.append(torch.cat([tile[:, :, :keep, :keep] for tile in row], dim=3))
    return torch.cat(result_rows, dim=2)


def _blend(before: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> None:
    """Cross-fade the first ``extent`` rows (dim 2) or columns (dim 3) of ``tile`` from the last
    ones of ``before``: weight ``k / extent`` on the tile at offset k."""
    extent = min(before.shape[dim], tile.shape[dim], extent)
    if extent == 0:
        return
    weight = (torch.arange(extent, dtype=torch.float64) / extent)
    weight_before = (1 - weight).to(tile.dtype)
    weight = weight.to(tile.dtype)
    shape = [1, 1, 1, 1]
    shape[dim] = extent
    weight, weight_before = weight.view(shape).to(tile.device), weight_before.view(shape).to(
        tile.device)
    head = tile.narrow(dim, 0, extent)
    tail = before.narrow(dim, before.shape[dim] - extent, extent)
    head.copy_(tail * weight_before + head * weight)
