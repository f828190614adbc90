"""The user scripts and the notebook of ``examples/``, loaded from their files (``examples/`` is no package)."""

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES_DIR = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def example():
    """``example(name)``: the script ``examples/<name>.py`` as a fresh module."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
