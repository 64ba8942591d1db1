"""Python tests reward: run the output's code and a set of tests in a sandboxed subprocess.

The output's code (the first fenced ```python block if it has one, else the whole text) runs in a
fresh interpreter (`python -I`, no user site, no environment), in its own session and temporary
directory, under limits: CPU seconds, address space, file size, open files, and (for a non-root
user) processes. Before the code runs, an audit hook (PEP 578) refuses what the code has no business
doing: starting processes (fork, exec, spawn, subprocess, os.system), opening sockets, loading
native code with ctypes, sending signals, and writing, renaming or deleting anything outside its
temporary directory. A wall-clock timeout kills the whole process group. Each test (an `assert`
statement or any code) then runs in the program's namespace; the score is the fraction that pass.
Every failure (syntax error, exception, timeout, memory) scores 0.0 for what did not run, and
`run(output)` reports what happened.

What this does not stop: code that deliberately forges the result line, or escapes the interpreter
through a hole in CPython's audit coverage. For untrusted code at scale, run the reward worker in a
container or VM; this sandbox is for a model's programs, not an adversary's.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from searchdec.rewards.base import Reward

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.S)

# The program the sandbox runs: limits, then the audit hook, then the code, then each test.
_RUNNER = r"""
import json, os, resource, sys
spec = json.loads(sys.stdin.read())
nonce, root = spec["nonce"], os.path.realpath(spec["root"])
for limit, value in ((resource.RLIMIT_CPU, spec["cpu"]), (resource.RLIMIT_AS, spec["memory"]),
                     (resource.RLIMIT_FSIZE, spec["fsize"]), (resource.RLIMIT_NOFILE, 64)):
    resource.setrlimit(limit, (value, value))
if os.geteuid() != 0:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
os.chdir(root)

DENIED = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile",
          "subprocess.Popen", "pty.spawn", "socket.__new__", "socket.connect", "socket.bind",
          "socket.getaddrinfo", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.kill", "os.killpg",
          "signal.pthread_kill", "sys._current_frames", "sys.settrace", "sys.setprofile", "os.setuid",
          "os.chroot", "resource.setrlimit", "resource.prlimit", "sys.addaudithook"}
PATHS = {"os.remove": 0, "os.rename": 0, "os.rmdir": 0, "os.mkdir": 0, "os.chmod": 0, "os.chown": 0,
         "os.link": 0, "os.symlink": 1, "os.truncate": 0, "os.utime": 0, "shutil.rmtree": 0, "shutil.move": 1,
         "shutil.copyfile": 1, "os.replace": 1}
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def inside(path):
    if isinstance(path, int):
        return True  # a descriptor already opened
    real = os.path.realpath(os.fsdecode(path))
    return real == root or real.startswith(root + os.sep)

def hook(event, args):
    if event in DENIED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(flags & WRITE)
        if writing and path is not None and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory")
    elif event in PATHS:
        targets = [args[0]] + ([args[1]] if PATHS[event] and len(args) > 1 else [])
        for target in targets:
            if target is not None and not inside(target):
                raise PermissionError(f"sandbox: {event} on {target!r} outside the sandbox directory")

result = {"error": None, "passed": []}
out = os.fdopen(os.dup(1), "w")
sys.addaudithook(hook)
namespace = {"__name__": "__main__"}
try:
    exec(compile(spec["code"], "<output>", "exec"), namespace)
except BaseException as error:
    result["error"] = f"{type(error).__name__}: {error}"
else:
    for test in spec["tests"]:
        try:
            exec(compile(test, "<test>", "exec"), namespace)
            result["passed"].append(True)
        except BaseException:
            result["passed"].append(False)
out.write(nonce + json.dumps(result) + "\n")
out.flush()
os._exit(0)
"""


@dataclass
class Run:
    """What one sandboxed run did."""

    passed: list[bool]
    error: str | None
    timed_out: bool = False

    @property
    def score(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


class PythonTests(Reward):
    def __init__(
        self,
        tests: list[str] | str,
        *,
        timeout: float = 5.0,
        memory_mb: int = 512,
        setup: str = "",
        python: str = sys.executable,
    ) -> None:
        super().__init__()
        self.tests = [tests] if isinstance(tests, str) else list(tests)
        if not self.tests or not all(isinstance(t, str) and t.strip() for t in self.tests):
            raise ValueError("tests must be a non-empty list of Python statements")
        if timeout <= 0 or memory_mb < 32:
            raise ValueError("timeout must be > 0 and memory_mb >= 32")
        self.timeout, self.memory_mb, self.setup, self.python = timeout, memory_mb, setup, python

    def _score(self, prompts, outputs):
        return [self.run(output).score for output in outputs]

    def run(self, output: str) -> Run:
        code = extract_code(output)
        nonce = secrets.token_hex(8)
        with tempfile.TemporaryDirectory(prefix="searchdec-sandbox-") as root:
            spec = {
                "nonce": nonce,
                "root": root,
                "code": self.setup + "\n" + code,
                "tests": self.tests,
                "cpu": max(1, int(self.timeout) + 1),
                "memory": self.memory_mb << 20,
                "fsize": 16 << 20,
            }
            process = subprocess.Popen(
                [self.python, "-I", "-c", _RUNNER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=root,
                env={"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root},
                start_new_session=True,
            )
            try:
                stdout, _ = process.communicate(json.dumps(spec).encode(), timeout=self.timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                return Run([False] * len(self.tests), f"timed out after {self.timeout} s", timed_out=True)
            finally:
                _kill_group(process)
        for line in stdout.decode(errors="replace").splitlines():
            if line.startswith(nonce):
                result = json.loads(line[len(nonce) :])
                passed = result["passed"] or [False] * len(self.tests)
                return Run(passed, result["error"])
        reason = "killed (memory or CPU limit)" if process.returncode and process.returncode < 0 else "no result"
        return Run([False] * len(self.tests), f"{reason}, exit status {process.returncode}")


def extract_code(output: str) -> str:
    """The first fenced Python block of `output`, or all of it."""
    found = _FENCE.search(output)
    return found.group(1) if found else output


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
