"""The command line without a model: `searchdec serve` with the `server` extra missing names the
extra to install and the missing module, in one line, before any model is loaded."""

import os
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


def test_bench_rejects_an_unknown_bench_by_name():
    result = subprocess.run(
        [sys.executable, "-m", "searchdec", "bench", "no-such-bench"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "invalid choice: 'no-such-bench'" in result.stderr


def test_bench_grammars_prints_ours_beside_raw_llguidance_on_the_bundled_schemas():
    """`searchdec bench grammars` on the schemas shipped in the package (what an installed searchdec has):
    both engines compile and walk the same ones (7 of 8), neither accepts an invalid instance, and the ratio
    line is printed."""
    from searchdec.bench.grammars import BUNDLED_DATA

    assert len(list(BUNDLED_DATA.glob("*.json"))) == 8
    result = subprocess.run(
        [sys.executable, "-m", "searchdec", "bench", "grammars", "--engines", "searchdec,llguidance"]
        + ["--data", str(BUNDLED_DATA), "--every", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if "/8 " in line}
    ours, raw = rows["searchdec"], rows["llguidance"]
    assert ours[1] == raw[1] and ours[2] == raw[2] and int(ours[2]) >= 7, result.stdout  # compiled "n/8", walked
    assert ours[3] == raw[3] == "0", result.stdout  # invalid instances accepted
    assert "searchdec / raw llguidance: TTFM p50" in result.stdout
