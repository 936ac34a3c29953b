"""Model outputs: the kernel's one output mechanism (``diffusion_kernel.base_output.BaseOutput``), a
dataclass that is also a read-only dict reachable by field name, key and position."""

from __future__ import annotations

from ..base_output import BaseOutput

# The name model outputs derive from (``UNet2DOutput(ModelOutput)``): the same base as scheduler
# and pipeline outputs.
ModelOutput = BaseOutput

__all__ = ["BaseOutput", "ModelOutput"]
