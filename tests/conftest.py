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


@pytest.fixture(scope="session")
def llama_smollm():
    """The default model's GGUF run by llama.cpp (`runtime="llama.cpp"`). Skipped where llama-cpp-python
    is not installed: it builds llama.cpp from source (45-85 minutes on 2 cores), which CI does not."""
    pytest.importorskip("llama_cpp")
    import searchdec as sd

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return sd.load("smollm2-135m", runtime="llama.cpp")


@pytest.fixture(params=["torch", "llama.cpp"])
def runtime(request):
    """A model on each runtime the contract suites run over: the tiny random-weight torch model, and
    the default model on llama.cpp (where it is installed)."""
    if request.param == "llama.cpp":
        model = request.getfixturevalue("llama_smollm")
        model.cache.clear()  # shared by the session: each test starts with nothing cached
        return model
    return tiny_model()
