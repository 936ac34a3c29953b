"""Running the ```python blocks of a markdown page, as a reader would: in order, in one namespace.
Shared by every docs test (tests/test_docs_examples.py and the vision, Hub and community ones)."""

from __future__ import annotations

import re


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fences of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def run_blocks(text: str, name: str, namespace: dict) -> dict:
    """Run every python block of ``text`` in ``namespace``; a failure names ``name`` (the page)
    and the block's number, with the block."""
    for number, block in enumerate(python_blocks(text), 1):
        try:
            exec(compile(block, f"{name} python block {number}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{name} python block {number} failed: {exc!r}\n{block}") \
                from exc
    return namespace
