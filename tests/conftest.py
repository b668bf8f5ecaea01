"""Shared fixtures.

The example plugin ``tests/plugins/good_plugin.py`` is loaded here, at import, so that tests
parametrised over every registered variant at collection time include a plugin's variant too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modtransfer.builtins import load_builtins
from modtransfer.core.components import COMPONENTS
from modtransfer.core.plugins import load_plugin_file
from modtransfer.core.task import TASKS
from modtransfer.core.variant import VARIANTS

PLUGIN_DIR = Path(__file__).parent / "plugins"
GOOD_PLUGIN = PLUGIN_DIR / "good_plugin.py"

load_builtins()
if load_plugin_file(GOOD_PLUGIN) is None:
    raise RuntimeError(f"the example plugin {GOOD_PLUGIN} failed to load; see modtransfer.core.plugins.PROBLEMS")


@pytest.fixture(scope="session")
def plugin_dir() -> Path:
    """The folder of example plugin files."""
    return PLUGIN_DIR


@pytest.fixture(scope="session")
def empty_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A task cache folder with no prepared data (tasks fall back to synthetic batches)."""
    return tmp_path_factory.mktemp("empty-cache")


@pytest.fixture
def temporary_plugin() -> Iterator[Callable[[str | Path], str | None]]:
    """Load plugin files for one test.

    Everything registered during the test (components, variants, tasks; by the plugin files or
    by the test itself) is unregistered afterwards, so later tests see the registries unchanged.
    """
    before = {slot: set(reg.names()) for slot, reg in COMPONENTS.items()}
    before_variants, before_tasks = set(VARIANTS.names()), set(TASKS.names())
    before_modules = {m for m in sys.modules if m.startswith("modtransfer_plugin_")}
    modules: list[str] = []

    def load(path: str | Path) -> str | None:
        name = load_plugin_file(path)
        if name is not None:
            modules.append(name)
        return name

    yield load
    for slot, reg in COMPONENTS.items():
        for name in set(reg.names()) - before[slot]:
            reg.unregister(name)
    for name in set(VARIANTS.names()) - before_variants:
        VARIANTS.unregister(name)
    for name in set(TASKS.names()) - before_tasks:
        TASKS.unregister(name)
    for name in modules:
        sys.modules.pop(name, None)
    # plugins the CLI loaded in-process during the test: forget them too, so a later load registers again
    for name in {m for m in sys.modules if m.startswith("modtransfer_plugin_")} - before_modules:
        sys.modules.pop(name, None)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for the test (training tests on 2 shared cores run several times faster)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
