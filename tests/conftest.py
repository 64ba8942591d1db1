import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_model  # noqa: E402


@pytest.fixture
def tiny():
    return tiny_model()


@pytest.fixture(scope="session")
def smollm():
    """The real default model, SmolLM2-135M-Instruct, from its PyPI package (no model hub)."""
    import searchdec as sd

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return sd.load("smollm2-135m")
