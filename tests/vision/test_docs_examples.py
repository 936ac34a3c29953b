"""Every python code block of docs/vision.md runs, in order, in one namespace (as a reader would
run them one after the other)."""

from pathlib import Path

import torch
from doc_blocks import python_blocks, run_blocks

from .tiny import single_thread  # noqa: F401

DOC = Path(__file__).resolve().parents[2] / "docs" / "vision.md"


def test_the_doc_has_the_examples_it_promises():
    text = DOC.read_text()
    for heading in ("Text to image", "Image to image", "Inpainting", "Swapping the scheduler",
                    "The model and the scheduler, by hand", "Reusing seeds and latents"):
        assert f"## {heading}" in text
    assert len(python_blocks(text)) >= 10


def test_every_python_block_of_the_vision_doc_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = run_blocks(DOC.read_text(), "docs/vision.md", {"__name__": "docs_vision"})
    assert isinstance(namespace["norms"], list) and len(namespace["norms"]) == 10
    assert len(list(namespace["workdir"].glob("step_*.png"))) == 5
    assert namespace["euler"][0].size == (32, 32)
    assert torch.is_tensor(namespace["latents"])
