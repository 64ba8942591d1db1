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


def bench_search(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "searchdec", "bench", "search", *options],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def beam_rows(stdout: str) -> dict[str, list[float]]:
    """The speed table's rows: engine -> [p50, p99] seconds per prompt."""
    return {
        cells[0]: [float(cell) for cell in cells[1:]]
        for line in stdout.splitlines()
        if line.startswith(("| searchdec |", "| transformers |"))
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }


def test_bench_search_quick_runs_the_beam_row_beside_transformers_on_a_local_model(tmp_path):
    """`searchdec bench search --model DIR` on a tiny random model saved to a directory: the quick run prints
    only the Beam(4) speed row (the beams equal transformers' or it would stop), `--prompts` takes that many of
    the quick prompts, and no reuse or puzzle table follows."""
    from tiny import tiny_model

    model = tiny_model()
    model.hf.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    result = bench_search("--model", str(tmp_path), "--prompts", "2", "--max-tokens", "4", "--repeats", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "## Beam(4) vs transformers num_beams=4: 2 prompts, batch 1, 4 new tokens, best of 1" in result.stdout
    rows = beam_rows(result.stdout)
    assert set(rows) == {"searchdec", "transformers"} and all(t > 0 for r in rows.values() for t in r), result.stdout
    assert "ratio ours/theirs per prompt: p50" in result.stdout
    assert "Tokens forwarded" not in result.stdout and "Countdown" not in result.stdout


def test_bench_search_rejects_a_width_below_one_before_loading_a_model():
    result = bench_search("--width", "0", "--model", "no-such-model-is-ever-loaded")
    assert result.returncode == 2 and "--width must be >= 1, got 0" in result.stderr
    assert "unknown model" not in result.stderr


@pytest.mark.integration
def test_bench_search_quick_row_on_the_default_model():
    """One short real run of the quick row with the default model: Beam(4) equals transformers' beams on one
    prompt (the bench stops otherwise) and both timings are printed."""
    result = bench_search("--prompts", "1", "--max-tokens", "4", "--repeats", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 prompts, batch 1, 4 new tokens" in result.stdout
    assert set(beam_rows(result.stdout)) == {"searchdec", "transformers"}, result.stdout


def test_bench_peer_times_transformers_on_the_token_ids_searchdec_decodes(tiny):
    """The one transformers timing loop of the benches (searchdec/bench/peers.py): a left-padded batch of text
    and chat prompts gives each row's greedy tokens as searchdec returns them (cut after the first EOS), and
    beam search reports the keys and values its cache holds for every beam."""
    import searchdec as sd
    from searchdec.bench.peers import alternate, pct, transformers_generate

    prompts = ["a much longer prompt than the other one", [{"role": "user", "content": "hi"}]]
    run = transformers_generate(tiny, prompts, 6)
    assert run.seconds > 0
    assert run.tokens == [out.tokens for out in sd.generate(tiny, prompts, max_tokens=6)]
    beams = transformers_generate(tiny, [tiny.encode("abc")], 4, num_beams=3)
    config = tiny.config
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4  # float32
    assert beams.kv_bytes % (3 * per_position) == 0 and beams.kv_bytes >= 3 * per_position * 3
    assert beams.tokens == [sd.generate(tiny, "abc", max_tokens=4, search=sd.Beam(3)).tokens]
    with pytest.raises(ValueError, match="at least one prompt"):
        transformers_generate(tiny, [], 4)
    runs = iter([(0.1, [1]), (0.2, [1]), (0.3, [1]), (0.4, [2])])
    with pytest.raises(SystemExit, match="outputs differ on prompt 7"):
        alternate(lambda: next(runs), lambda: next(runs), 2, same="on prompt 7")
    assert pct([], 50) != pct([], 50) and pct([1.0, 3.0], 50) == 2.0  # nan for none
