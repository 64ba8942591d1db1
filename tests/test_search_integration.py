"""Beam search on the real default model equals transformers `generate(num_beams=...)` token for token
with scores to 1e-4, best-first beam search finds the same best hypothesis with no more expansions, and
diverse beam search equals transformers 4.56.2's group beam search (fixtures made by
tests/fixtures/make_diverse_beam.py, whose docstring has the command).

Four beam configurations cover width {2, 4, 8}, length_penalty {0, 1, 2}, early_stopping {False,
True, "never"} and num_return {1, width} (each value at least once; more would cost minutes of CI).
Both engines run all 20 prompts as one batch (transformers left-pads them).
"""

import json
from pathlib import Path

import pytest
import torch
from test_smollm_integration import PROMPTS

import searchdec as sd

pytestmark = pytest.mark.integration

PROMPTS20 = PROMPTS[:20]
MAX_TOKENS = 48
CONFIGS = [  # (width, length_penalty, early_stopping, num_return): every value of each at least once
    (2, 0.0, False, 2),
    (2, 1.0, "never", 1),
    (4, 2.0, True, 4),
    (8, 1.0, False, 1),
]
_ours: dict = {}


def ours(model, config):
    if config not in _ours:
        width, lp, es, nr = config
        _ours[config] = sd.generate(model, PROMPTS20, max_tokens=MAX_TOKENS, search=sd.Beam(width, lp, es, nr))
    return _ours[config]


def transformers_beam(model, width, lp, es, nr):
    tok = model.tokenizer
    tok.padding_side = "left"
    texts = [
        p if isinstance(p, str) else tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in PROMPTS20
    ]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=True)
    with torch.inference_mode():
        out = model.hf.generate(
            **enc,
            max_new_tokens=MAX_TOKENS,
            num_beams=width,
            length_penalty=lp,
            early_stopping=es,
            num_return_sequences=nr,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=sorted(model.eos_token_ids),
            return_dict_in_generate=True,
            output_scores=True,
        )
    eos = model.eos_token_ids
    results = []
    for row in range(out.sequences.shape[0]):
        tokens = out.sequences[row, enc["input_ids"].shape[1] :].tolist()
        end = next((i for i, t in enumerate(tokens) if t in eos), None)
        results.append((tokens if end is None else tokens[: end + 1], float(out.sequences_scores[row])))
    return [results[i * nr : (i + 1) * nr] for i in range(len(PROMPTS20))]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"w{c[0]}-lp{c[1]:g}-es{c[2]}-n{c[3]}")
def test_beam_is_token_identical_to_transformers_beam_search(smollm, config):
    width, lp, es, nr = config
    mine = ours(smollm, config)
    theirs = transformers_beam(smollm, width, lp, es, nr)
    for prompt, out, expected in zip(PROMPTS20, mine, theirs):
        assert len(out.hypotheses) == nr
        assert [h.tokens for h in out.hypotheses] == [tokens for tokens, _ in expected], prompt
        assert [h.score for h in out.hypotheses] == pytest.approx([score for _, score in expected], abs=1e-4)


def test_best_first_beam_finds_beams_best_hypothesis_with_no_more_expansions(smollm):
    beam = ours(smollm, (2, 0.0, False, 2))
    best = sd.generate(smollm, PROMPTS20, max_tokens=MAX_TOKENS, search=sd.BestFirstBeam(2))
    for prompt, b, f in zip(PROMPTS20, beam, best):
        assert f.tokens == b.tokens, prompt
        assert f.score == pytest.approx(b.score, abs=1e-4)
        assert f.stats.expansions <= b.stats.expansions
    assert sum(f.stats.expansions for f in best) < sum(b.stats.expansions for b in beam)
    assert len(smollm.cache) == 0  # every entry a search made is released


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("index", range(3), ids=["w4-g2-d0.5", "w6-g3-d1-n6", "w4-g4-d2-lp0-es"])
def test_diverse_beam_equals_transformers_4_56_group_beam_search(smollm, index):
    path = FIXTURES / "diverse_beam_tf456.json"
    if not path.exists():
        pytest.skip(f"{path.name} missing: make it with tests/fixtures/make_diverse_beam.py (see its docstring)")
    reference = json.loads(path.read_text())
    assert reference["transformers"] == "4.56.2"
    prompts = json.loads((FIXTURES / "search_prompts.json").read_text())
    if index >= len(reference["configs"]):
        pytest.skip(f"{path.name} holds {len(reference['configs'])} configurations")
    config = reference["configs"][index]
    search = sd.DiverseBeam(
        config["width"],
        config["groups"],
        config["diversity_penalty"],
        config["length_penalty"],
        config["early_stopping"],
        config["num_return"],
    )
    outs = sd.generate(smollm, prompts["prompts"], max_tokens=reference["max_new_tokens"], search=search)
    for prompt, ids, out, run in zip(prompts["prompts"], prompts["ids"], outs, config["runs"]):
        assert run["prompt_ids"] == ids and out.prompt_tokens == len(ids)
        assert [h.tokens for h in out.hypotheses] == [h["tokens"] for h in run["hypotheses"]], prompt
        # float32 sums of ~40 log-probabilities differ by summation order: a few units in the 5th digit
        assert [h.score for h in out.hypotheses] == pytest.approx(
            [h["score"] for h in run["hypotheses"]], rel=5e-5, abs=2e-5
        )
