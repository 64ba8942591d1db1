"""The command line without a model: `searchdec serve` with the `server` extra missing names the
extra to install and the missing module, in one line, before any model is loaded."""

import subprocess
import sys

import pytest


def serve_without(module: str) -> subprocess.CompletedProcess:
    # A None entry in sys.modules makes `import module` raise ModuleNotFoundError, as if it were absent.
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from searchdec.cli import main\n"
        "sys.exit(main(['serve', '--model', 'no-such-model-is-ever-loaded']))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["uvicorn", "fastapi"])
def test_serve_without_the_server_extra_names_the_extra_and_the_missing_module(module):
    result = serve_without(module)
    assert result.returncode == 2, result.stderr
    assert "pip install 'searchdec[server]'" in result.stderr
    assert f"module {module!r} is not installed" in result.stderr
    assert "Traceback" not in result.stderr
    assert "unknown model" not in result.stderr  # it stopped before loading any model
