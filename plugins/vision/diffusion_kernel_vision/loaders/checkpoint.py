"""An original single-file checkpoint (CompVis / A1111 ``.safetensors`` or ``.ckpt``), opened
for reading tensor by tensor, and what it holds: the Stable Diffusion variant, read from its keys.

Variants (facts of the checkpoints): SD 1.x holds the transformers CLIP text model under
``cond_stage_model.transformer.``; SD 2.x the OpenCLIP ViT-H one under
``cond_stage_model.model.`` and cross-attends to 1024-wide states; inpainting U-Nets take 9
input channels (latents, mask, masked-image latents). EMA weights, when the training run saved
them, sit beside the others as ``model_ema.<U-Net key after "model." without dots>``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from diffusion_kernel.errors import CheckpointError, FileAccessError
from diffusion_kernel.hub import pin_revision, resolve_file
from diffusion_kernel.weights import PICKLE_SUFFIXES, SafetensorsFile, load_pickle

from .ldm_keys import CLIP_PREFIXES, OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIXES

_HUB_URL = re.compile(r"https?://[^/]+/(?P<repo>[^/]+/[^/]+)/(?:blob|resolve)/(?P<revision>[^/]+)"
                      r"/(?P<path>.+)")
_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
_ATTN2_TO_K = UNET_PREFIX + "input_blocks.{}.1.transformer_blocks.0.attn2.to_k.weight"
# Keys that tell other files apart, for the error a wrong file gets. SDXL shares the U-Net
# prefix and block names with SD 1.x / 2.x; its second text encoder gives it away.
_SDXL = ("conditioner.embedders.1.", "Stable Diffusion XL")
_OTHER_MODELS = (
    _SDXL,
    ("double_blocks.", "FLUX"), ("model.diffusion_model.double_blocks.", "FLUX"),
    ("joint_blocks.", "Stable Diffusion 3"), ("model.diffusion_model.joint_blocks.",
                                               "Stable Diffusion 3"),
    ("lora_unet_", "a LoRA (load it with load_lora_weights)"),
    ("emb_params", "a textual inversion embedding (load_textual_inversion)"),
    ("string_to_param", "a textual inversion embedding (load_textual_inversion)"),
    ("control_model.", "a ControlNet"),
)


class Checkpoint:
    """The tensors of one checkpoint file, read when asked (memory-mapped safetensors, or a
    pickle loaded with ``weights_only=True`` when allowed)."""

    def __init__(self, path: Path, allow_pickle: bool = False):
        self.path = path
        self._file: SafetensorsFile | None = None
        if path.name.endswith(".safetensors"):
            self._file = SafetensorsFile(path)
            self._state: dict[str, Any] = {}
            names = self._file.keys()
        else:
            self._state = load_pickle(path, allow_pickle)
            names = [k for k, v in self._state.items() if isinstance(v, torch.Tensor)]
        self.names = set(names)

    def __contains__(self, key: str) -> bool:
        return key in self.names

    def shape(self, key: str) -> tuple[int, ...]:
        return self._file.shape(key) if self._file else tuple(self._state[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._file.dtype(key) if self._file else self._state[key].dtype

    def load(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor as ``dtype`` (default: as stored); a kept dtype stays a view of the file."""
        if self._file:
            return self._file.load(key, dtype)
        return self._state[key].to(dtype=dtype) if dtype else self._state[key]

    def with_prefix(self, prefix: str) -> list[str]:
        return [k for k in self.names if k.startswith(prefix)]

    def close(self) -> None:
        if self._file:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def checkpoint_path(link: str | os.PathLike, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None,
                    local_files_only: bool | None = None,
                    token: str | bool | None = None) -> Path:
    """The local path of a checkpoint: a file, a Hub URL (``https://huggingface.co/org/repo/
    blob/main/model.safetensors``) or ``org/repo/path/in/repo.safetensors`` (downloaded)."""
    if os.path.isfile(link):
        return Path(link)
    text = os.fspath(link)
    match = _HUB_URL.fullmatch(text)
    if match:
        repo, revision, filename = match["repo"], match["revision"], match["path"]
    else:
        parts = text.split("/")
        if len(parts) < 3 or not text.endswith(_SUFFIXES) or text.startswith((".", "/", "~")):
            raise FileAccessError(f"{text!r} is not a checkpoint file, a Hub URL or "
                                  f"'org/repo/file.safetensors'; check the path")
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if not filename.endswith(_SUFFIXES):
        raise FileAccessError(f"{filename!r} is not a .safetensors or .ckpt checkpoint")
    hub = dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    revision = pin_revision(repo, revision=revision, **hub)
    return resolve_file(repo, filename, revision=revision, **hub)


# What the checkpoint holds ---------------------------------------------------------------------
def detect_variant(checkpoint: Checkpoint) -> str:
    """``"v1"``, ``"v2"``, ``"inpainting"`` or ``"inpainting_v2"``; ``CheckpointError`` for a
    file that is not a Stable Diffusion 1.x / 2.x checkpoint."""
    if _CONV_IN not in checkpoint:
        raise CheckpointError(f"{checkpoint.path} is not a Stable Diffusion 1.x / 2.x checkpoint "
                              f"(no {UNET_PREFIX}* U-Net weights): it looks like "
                              f"{_what_else(checkpoint)}")
    if checkpoint.with_prefix(_SDXL[0]):
        raise CheckpointError(f"{checkpoint.path} is a {_SDXL[1]} checkpoint; only Stable "
                              f"Diffusion 1.x / 2.x single files are supported")
    v2 = bool(checkpoint.with_prefix(OPEN_CLIP_PREFIX)) or _cross_attention_width(checkpoint) \
        == 1024
    if checkpoint.shape(_CONV_IN)[1] == 9:
        return "inpainting_v2" if v2 else "inpainting"
    return "v2" if v2 else "v1"


def _cross_attention_width(checkpoint: Checkpoint) -> int | None:
    for block in range(1, 3):
        key = _ATTN2_TO_K.format(block)
        if key in checkpoint:
            return checkpoint.shape(key)[-1]
    return None


def _what_else(checkpoint: Checkpoint) -> str:
    for marker, what in _OTHER_MODELS:
        if any(k.startswith(marker) or k.endswith(marker) for k in checkpoint.names):
            return what
    if any(k.startswith(("encoder.", "decoder.")) or k.startswith(VAE_PREFIXES)
           for k in checkpoint.names):
        return "a VAE alone (load it with AutoencoderKL.from_single_file)"
    shown = ", ".join(sorted(checkpoint.names)[:4])
    return f"an unknown model (keys such as {shown})"


def text_encoder_layout(checkpoint: Checkpoint) -> tuple[str, str] | None:
    """``("clip", prefix)`` or ``("open_clip", prefix)``; ``None`` without a text encoder."""
    if checkpoint.with_prefix(OPEN_CLIP_PREFIX):
        return "open_clip", OPEN_CLIP_PREFIX
    for prefix in CLIP_PREFIXES:
        if checkpoint.with_prefix(prefix):
            return "clip", prefix
    return None


def vae_prefix(checkpoint: Checkpoint) -> str:
    """``first_stage_model.`` in a full checkpoint; ``""`` in a standalone VAE file."""
    for prefix in VAE_PREFIXES:
        if checkpoint.with_prefix(prefix + "encoder."):
            return prefix
    if checkpoint.with_prefix("encoder.") or checkpoint.with_prefix("decoder."):
        return ""
    raise CheckpointError(f"{checkpoint.path} holds no VAE weights (first_stage_model.* or "
                          f"encoder.* / decoder.*)")


def unet_prefix(checkpoint: Checkpoint) -> str:
    """``model.diffusion_model.`` in a full checkpoint; ``""`` in a U-Net-only file."""
    if _CONV_IN in checkpoint:
        return UNET_PREFIX
    if "input_blocks.0.0.weight" in checkpoint:
        return ""
    raise CheckpointError(f"{checkpoint.path} holds no U-Net weights ({UNET_PREFIX}*): it looks "
                          f"like {_what_else(checkpoint)}")


def uses_ema(checkpoint: Checkpoint, extract_ema: bool) -> bool:
    """Whether the U-Net's EMA copy is read: the file has EMA weights (more than 100
    ``model_ema.`` keys, as diffusers counts) and ``extract_ema`` is on."""
    return extract_ema and len(checkpoint.with_prefix("model_ema.")) > 100


def ema_key(key: str) -> str:
    """``model.diffusion_model.input_blocks.0.0.weight`` -> its EMA twin's key."""
    return "model_ema." + "".join(key.split(".")[1:])
