"""diffusion-kernel molecules plugin: conformer generation with GeoDiff (Xu et al. 2022).

``SHIPPED_MODEL``: the folder of the pipeline that ships with the plugin (also
``diffusion-kernel generate --model conformers``); ``SHIPPED_TEST_SET``: the held-out NCI
molecules and their reference conformers it is evaluated on (docs/molecules.md)."""

from .plugin import SHIPPED_MODEL, SHIPPED_TEST_SET

__all__ = ["SHIPPED_MODEL", "SHIPPED_TEST_SET"]
