"""Every ```python block of README.md and docs/*.md runs: per file, in order, in one namespace
(as a reader runs them one after the other), in an empty working directory.

Blocks that are not Python to run use other fence languages (```bash, ```toml, ```text).
docs/vision.md has its own runner (tests/vision/test_docs_examples.py); docs/hub.md needs the
local Hub server (tests/hub/test_docs_hub.py); docs/community.md is not covered here."""

from pathlib import Path

import pytest
from doc_blocks import python_blocks, run_blocks

ROOT = Path(__file__).resolve().parents[1]
COVERED_ELSEWHERE = {"vision.md", "hub.md", "community.md"}
DOCS = [ROOT / "README.md"] + sorted(p for p in (ROOT / "docs").glob("*.md")
                                     if p.name not in COVERED_ELSEWHERE)


def label(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix() if doc.is_relative_to(ROOT) else doc.name


def run_doc(doc: Path) -> dict:
    """Runs every python block of `doc` in one namespace; a failure names the file and block."""
    return run_blocks(doc.read_text(), label(doc),
                      {"__name__": "docs_" + doc.stem.replace("-", "_")})


def test_the_runner_finds_the_docs_with_examples():
    names = {doc.name for doc in DOCS}
    assert {"README.md", "kernel.md", "plugins.md", "schedulers.md", "training.md",
            "vision-models.md", "migrating-from-diffusers.md"} <= names
    assert len(python_blocks((ROOT / "docs" / "plugins.md").read_text())) >= 5


def test_a_failing_block_is_named_by_file_and_number(tmp_path, monkeypatch):
    doc = tmp_path / "broken.md"
    doc.write_text("```python\nx = 1\n```\n\n```python\nundefined_name\n```\n")
    with pytest.raises(AssertionError, match=r"broken.md python block 2 failed: NameError"):
        run_doc(doc)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread on a shared, loaded machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def in_process_plugins_removed():
    """A doc that registers a plugin in-process must unregister it; removed here either way."""
    from diffusion_kernel import plugin_manager

    plugin_manager.ensure_loaded()
    before = set(plugin_manager.plugins)
    yield before
    for name in set(plugin_manager.plugins) - before:
        plugin_manager.unregister_plugin(name)


@pytest.mark.parametrize("doc", DOCS, ids=[label(doc) for doc in DOCS])
def test_every_python_block_of_the_doc_runs(doc, tmp_path, monkeypatch, one_thread,
                                            in_process_plugins_removed):
    from diffusion_kernel import plugin_manager

    monkeypatch.chdir(tmp_path)
    run_doc(doc)
    assert set(plugin_manager.plugins) == in_process_plugins_removed, "the doc left a plugin"
