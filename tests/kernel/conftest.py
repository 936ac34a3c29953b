"""Fixtures for the kernel tests: throwaway plugins registered in-process, removed afterwards."""

from __future__ import annotations

import pytest
from diffusion_kernel import plugin_manager


@pytest.fixture
def register_plugin():
    """``register_plugin(obj, name)``: register a plugin object for one test only."""
    names: list[str] = []

    def register(obj, name: str):
        plugin_manager.register_plugin(obj, name)
        names.append(name)
        return obj

    yield register
    for name in reversed(names):
        plugin_manager.unregister_plugin(name)


@pytest.fixture
def toys(register_plugin):
    """The toy classes of ``kernel_toys``, registered under the plugin name ``toys``."""
    import kernel_toys

    register_plugin(kernel_toys.ToyPlugin(), "toys")
    return kernel_toys
