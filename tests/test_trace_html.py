"""A search trace's HTML view renders in headless Chromium without console errors, and draws the tree."""

import re
import shutil
import subprocess

import pytest

import searchdec as sd

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
CHROMIUM = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--window-size=1200,800"]


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (install Debian's `chromium`; .ci/run does)")
def test_trace_html_renders_in_headless_chromium_without_console_errors(tiny, tmp_path):
    out = sd.generate(tiny, ["hello", "abc"], max_tokens=8, search=sd.Beam(3, num_return=2))[0]
    page = out.trace.save(tmp_path / "trace.html")
    shot = tmp_path / "trace.png"

    run = chromium(f"--screenshot={shot}", page.as_uri())
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # the page logs nothing; any console line is an error or a stray log
    assert shot.exists() and shot.stat().st_size > 5000  # a drawn page, not a blank one

    dom = chromium("--dump-dom", page.as_uri()).stdout
    circles = len(re.findall(r"<circle", dom))
    assert circles == len(out.trace)  # one dot per recorded node
    assert dom.count('stroke="#d4a017"') == len(out.trace.best) - 1  # the winning path's edges
