"""BFCL (Berkeley Function Calling Leaderboard) AST accuracy, with grammar-enforced tool calls vs without.

Categories: simple_python, multiple, parallel, parallel_multiple, irrelevance (BFCL v4 files, one JSON
object a line, answers in possible_answer/). Each case's question goes to the model with the same
system prompt in every arm (the functions as JSON and the call format, `searchdec.requests.
tool_prompt`). Arms: "free" parses whatever text comes back; "auto" adds the grammar
`sd.tool_calls(tools, tool_choice="auto", format="json")` (a valid call or a plain answer, the model
choosing, as BFCL runs); "required" forces a call (`tool_choice="required"`: the model still picks the
function and its arguments; not run on irrelevance, where any call is wrong). Greedy decoding, except
"bon": the "required" grammar plus best-of-N (`--samples` N, temperature `--temperature`, seed 0)
ranked by the grounding reward (`sd.rewards.Grounding(tools)`, ties broken by likelihood: the
server's `"reward": "grounding"`). The same N samples are also ranked by mean token log-probability
("bon-logprob", OpenAI's `best_of`), and "any-of-N" counts a case when any sample is correct (the
ceiling a reranker could reach). Every arm reports the tokens it generated and forwarded per case.

The AST checker is written here from BFCL's published rules: a call matches an expected one when the
function name is the same, every required parameter is present, no parameter is unexpected, and each
given value is one of the accepted values (an accepted "" means the parameter may be left out).
Strings compare case-insensitively without spaces and the punctuation , . / - _ * ^ ' " ; an int is
accepted where a float is expected; lists compare element-wise and dicts key by key. Parallel
categories need as many calls as expected, matched in any order. Irrelevance is correct when no call
is made.

Besides accuracy it reports, over the outputs that attempt calls, the rate that parse into calls and
the rate whose names exist and whose arguments validate against the tool's JSON Schema (BFCL's types
mapped: dict->object, float->number, tuple->array, any->no type).

Modes:
  python benchmarks/bfcl.py --mode inprocess --limit 20          # sd.generate, one case at a time
  python benchmarks/bfcl.py --categories simple_python multiple --arms required bon --limit 30
  python benchmarks/bfcl.py --mode server --url http://127.0.0.1:8000/v1 --limit 20   # a running server
  python benchmarks/bfcl.py --mode server --limit 20             # starts `searchdec serve` itself
Data: --data ../shared/data/bfcl (default), or tests/data/bfcl (a small Apache-2.0 subset).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's searchdec
CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bfcl"
_TYPES = {"dict": "object", "float": "number", "tuple": "array"}
# free: the prompt alone; auto / required: the same prompt plus sd.tool_calls with that tool_choice.
ARMS = ("free", "auto", "required", "bon")
_PUNCTUATION = re.compile(r"[\s,./\-_*^'\"]")


# --- data -----------------------------------------------------------------------------------


def load_cases(data: Path, category: str, limit: int | None = None) -> list[dict]:
    """Cases of a category with their expected calls (`answer`, None for irrelevance)."""
    lines = (data / f"BFCL_v4_{category}.json").read_text().splitlines()
    cases = [json.loads(line) for line in lines if line.strip()][:limit]
    answers_file = data / "possible_answer" / f"BFCL_v4_{category}.json"
    answers = {}
    if answers_file.exists():
        for line in answers_file.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                answers[entry["id"]] = entry["ground_truth"]
    for case in cases:
        case["answer"] = answers.get(case["id"])
        if category != "irrelevance" and case["answer"] is None:
            raise ValueError(f"{case['id']}: no possible answer in {answers_file}")
    return cases


def to_json_schema(node):
    """BFCL's parameter schema as JSON Schema (its Python-flavoured types mapped, `optional` dropped)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "optional":
            continue
        if key == "type" and isinstance(value, str):
            if value == "any":
                continue
            out[key] = _TYPES.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: to_json_schema(prop) for name, prop in value.items()}
        else:
            out[key] = to_json_schema(value)
    return out


def openai_tools(case: dict) -> list[dict]:
    return [
        {
            "type": "function",
            "function": {
                "name": f["name"],
                "description": f.get("description", ""),
                "parameters": to_json_schema(f["parameters"]),
            },
        }
        for f in case["function"]
    ]


def messages(case: dict) -> list[dict]:
    return [dict(m) for m in case["question"][0]]


# --- the AST checker ------------------------------------------------------------------------


def _normal(text: str) -> str:
    return _PUNCTUATION.sub("", text).lower()


def value_matches(value, accepted, schema: dict | None) -> bool:
    """`value` equals one of the `accepted` values (BFCL lists them; "" stands for "left out")."""
    return any(option != "" and _equal(value, option, schema or {}) for option in accepted)


def _equal(value, option, schema: dict) -> bool:
    kind = schema.get("type")
    if isinstance(option, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(option, bool) and value == option
    if isinstance(option, (int, float)):
        if not isinstance(value, (int, float)):
            return False
        if kind == "integer" and not isinstance(value, int):
            return False
        return float(value) == float(option)
    if isinstance(option, str):
        return isinstance(value, str) and _normal(value) == _normal(option)
    if isinstance(option, list):
        if not isinstance(value, list) or len(value) != len(option):
            return False
        items = schema.get("items") or {}
        return all(_equal(v, o, items) for v, o in zip(value, option))
    if isinstance(option, dict):
        if not isinstance(value, dict):
            return False
        props = schema.get("properties") or {}
        if set(value) - set(option):
            return False
        for key, expected in option.items():
            choices = expected if isinstance(expected, list) else [expected]
            if key in value:
                if not value_matches(value[key], choices, props.get(key)):
                    return False
            elif "" not in choices:
                return False
        return True
    return value == option


def call_matches(call: dict, expected: dict, functions: dict[str, dict]) -> bool:
    """`call` ({"name", "arguments"}) matches one expected call ({name: {param: [accepted]}})."""
    (name, params), = expected.items()  # fmt: skip
    if call.get("name") != name or not isinstance(call.get("arguments"), dict):
        return False
    arguments = call["arguments"]
    schema = functions[name]["parameters"]
    props = schema.get("properties") or {}
    if any(required not in arguments for required in schema.get("required", [])):
        return False
    if set(arguments) - set(params):
        return False
    for param, accepted in params.items():
        if param in arguments:
            if not value_matches(arguments[param], accepted, props.get(param)):
                return False
        elif "" not in accepted:
            return False
    return True


def case_correct(category: str, calls: list[dict] | None, case: dict) -> bool:
    if category == "irrelevance":
        return not calls
    if not calls:
        return False
    functions = {f["name"]: {**f, "parameters": to_json_schema(f["parameters"])} for f in case["function"]}
    expected = case["answer"]
    if len(calls) != len(expected):
        return False
    return _assign(calls, expected, functions, set())


def _assign(calls, expected, functions, used: set[int]) -> bool:
    """Each call matches a different expected call (any order)."""
    if not calls:
        return True
    first, rest = calls[0], calls[1:]
    for j, want in enumerate(expected):
        if j not in used and call_matches(first, want, functions):
            if _assign(rest, expected, functions, used | {j}):
                return True
    return False


# --- reading outputs ------------------------------------------------------------------------


def attempts_call(text: str) -> bool:
    t = text.strip()
    return t.startswith(("[", "{", "<tool_call>", "```"))


def parse_free_text(text: str) -> list[dict] | None:
    """Calls in unconstrained output (a JSON list or object, maybe fenced or wrapped), or None."""
    t = text.strip()
    t = re.sub(r"^```(?:json)?\s*|\s*```$", "", t)
    t = re.sub(r"^<tool_call>\s*|\s*</tool_call>$", "", t)
    try:
        value = json.loads(t)
    except json.JSONDecodeError:
        return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        return None
    for call in value:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or "arguments" not in call:
            return None
    return value


def calls_validate(calls: list[dict], tools: list[dict]) -> tuple[bool, str]:
    """Every call names a tool and its arguments validate against that tool's schema; else why not."""
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for call in calls:
        if call["name"] not in schemas:
            return False, f"unknown function {call['name']!r}"
        try:
            jsonschema.validate(call["arguments"], schemas[call["name"]])
        except jsonschema.ValidationError as error:
            return False, f"{call['name']}: {error.message}"
    return True, ""


# --- running --------------------------------------------------------------------------------


@dataclass
class Outcome:
    case_id: str
    text: str
    calls: list[dict] | None
    finish_reason: str
    attempted: bool
    valid: bool
    why: str = ""
    correct: bool = False
    generated: int = 0  # tokens generated for the case, every sample counted
    forwarded: int = 0  # tokens fed through the model for the case (prompt included)


@dataclass
class Tally:
    cases: int = 0
    correct: int = 0
    attempted: int = 0
    parsed: int = 0
    valid: int = 0
    cut: int = 0  # finish_reason "length"
    generated: int = 0
    forwarded: int = 0
    invalid: list[str] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.cases += 1
        self.correct += outcome.correct
        self.generated += outcome.generated
        self.forwarded += outcome.forwarded
        if outcome.finish_reason == "length":
            self.cut += 1  # never presented as calls; counted apart from the parse and validate rates
        elif outcome.attempted:
            self.attempted += 1
            if outcome.calls:
                self.parsed += 1
                if outcome.valid:
                    self.valid += 1
                else:
                    self.invalid.append(f"{outcome.case_id}: {outcome.why}")
            else:
                self.invalid.append(f"{outcome.case_id}: does not parse ({outcome.finish_reason})")


def _outcome(category: str, case: dict, text: str, calls, finish_reason: str, tools: list[dict]) -> Outcome:
    attempted = bool(calls) or attempts_call(text)
    valid, why = calls_validate(calls, tools) if calls else (False, "")
    outcome = Outcome(case["id"], text, calls, finish_reason, attempted, valid, why)
    outcome.correct = case_correct(category, calls, case)
    return outcome


def run_inprocess(
    model, category: str, cases: list[dict], arm: str, max_tokens: int, samples: int = 8, temperature: float = 0.7
) -> list[Outcome] | dict[str, list[Outcome]]:
    """Outcomes of an arm (for "bon", of its three rankings by name)."""
    import searchdec as sd
    from searchdec.requests import tool_prompt

    prompts, tool_lists = [], []
    for case in cases:
        tools = openai_tools(case)
        tool_lists.append(tools)
        prompts.append([{"role": "system", "content": tool_prompt(tools, "json")}, *messages(case)])
    if arm == "free":  # one batch: the same outputs as one at a time (greedy), in a fraction of the time
        outs = sd.generate(model, prompts, max_tokens=max_tokens)
        return [
            _outcome(category, case, out.text, parse_free_text(out.text), out.finish_reason, tools)
            for case, out, tools in zip(cases, outs, tool_lists)
        ]
    if arm == "bon":
        return _best_of_n(model, category, cases, prompts, tool_lists, max_tokens, samples, temperature)
    outcomes = []
    for case, prompt, tools in zip(cases, prompts, tool_lists):  # a constraint per case: one at a time
        spec = sd.tool_calls(tools, tool_choice=arm, format="json")  # undeclared argument keys forbidden
        out = sd.generate(model, prompt, constraint=spec, max_tokens=max_tokens)
        outcome = _constrained(category, case, spec, out, tools)
        outcome.generated, outcome.forwarded = len(out.tokens), out.stats.tokens_forwarded if out.stats else 0
        outcomes.append(outcome)
    return outcomes


def _constrained(category: str, case: dict, spec, hypothesis, tools: list[dict]) -> Outcome:
    text, reason = hypothesis.text, hypothesis.finish_reason
    calls = spec.parse(text) if reason == "stop" and text[:1] == "[" else None
    return _outcome(category, case, text, calls, reason, tools)


def _best_of_n(model, category, cases, prompts, tool_lists, max_tokens, samples, temperature) -> dict[str, list]:
    """The "required" grammar plus N samples per case, ranked by grounding (the "bon" arm), by mean
    token log-probability ("bon-logprob"), and any-of-N: three outcome lists from the same samples."""
    import searchdec as sd

    arms: dict[str, list[Outcome]] = {"bon": [], "bon-logprob": [], f"any-of-{samples}": []}
    for case, prompt, tools in zip(cases, prompts, tool_lists):
        spec = sd.tool_calls(tools, tool_choice="required", format="json")
        reward = sd.rewards.Weighted([(1.0, sd.rewards.Grounding(tools)), (0.01, sd.rewards.MeanLogprob())])
        search = sd.BestOfN(n=samples, reward=reward, sample=sd.Sample(temperature=temperature, seed=0))
        out = sd.generate(model, prompt, constraint=spec, max_tokens=max_tokens, search=search)
        each = [_constrained(category, case, spec, h, tools) for h in out.hypotheses]
        by_logprob = max(
            range(len(each)),
            key=lambda i: (out.hypotheses[i].finish_reason == "stop", _mean(out.hypotheses[i].token_logprobs), -i),
        )
        any_correct = next((o for o in each if o.correct), each[0])
        for name, outcome in zip(arms, (each[0], each[by_logprob], any_correct)):
            outcome = Outcome(**outcome.__dict__)
            outcome.generated = sum(len(h.tokens) for h in out.hypotheses)
            outcome.forwarded = out.stats.tokens_forwarded
            arms[name].append(outcome)
    return arms


def _mean(values) -> float:
    return sum(values) / max(len(values), 1)


def run_server(client, model_name: str, category: str, cases: list[dict], arm: str, max_tokens: int,
               concurrency: int, samples: int = 8, temperature: float = 0.7) -> list[Outcome]:  # fmt: skip
    from searchdec.requests import tool_prompt

    search = {"algorithm": "best_of_n", "n": samples, "reward": "grounding", "temperature": temperature, "seed": 0}

    def one(case):
        tools = openai_tools(case)
        if arm == "bon":  # the server's best-of-N with "reward": "grounding" under tool_choice "required"
            r = client.chat.completions.create(model=model_name, messages=messages(case), tools=tools,
                                               tool_choice="required", max_tokens=max_tokens,
                                               extra_body={"search": search})  # fmt: skip
        elif arm != "free":
            r = client.chat.completions.create(model=model_name, messages=messages(case), tools=tools,
                                               tool_choice=arm, temperature=0, max_tokens=max_tokens)  # fmt: skip
        if arm != "free":
            choice = r.choices[0]
            calls = None
            if choice.message.tool_calls:
                calls = [
                    {"name": c.function.name, "arguments": json.loads(c.function.arguments)}
                    for c in choice.message.tool_calls
                ]
            text = choice.message.content or json.dumps(calls)
        else:
            prompt = [{"role": "system", "content": tool_prompt(tools, "json")}, *messages(case)]
            r = client.chat.completions.create(model=model_name, messages=prompt, temperature=0, max_tokens=max_tokens)
            choice = r.choices[0]
            text = choice.message.content
            calls = parse_free_text(text)
        outcome = _outcome(category, case, text, calls, choice.finish_reason, tools)
        outcome.generated = r.usage.completion_tokens if r.usage else 0
        return outcome

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, cases))


def _start_server(model: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "searchdec",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, env=env, cwd=Path(__file__).resolve().parents[1])
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError("the server did not start")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["inprocess", "server"], default="inprocess")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    parser.add_argument("--limit", type=int, default=20, help="cases per category (the first ones)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--url", default=None, help="a running server's /v1 URL (server mode)")
    parser.add_argument("--port", type=int, default=8765, help="port for a server this script starts")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--samples", type=int, default=8, help="best-of-N samples of the bon arm")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the bon arm")
    parser.add_argument("--json", type=Path, default=None, help="write every outcome here")
    parser.add_argument("--show-invalid", action="store_true")
    args = parser.parse_args(argv)

    server = None
    if args.mode == "inprocess":
        import searchdec as sd

        model = sd.load(args.model)
        run = lambda category, cases, arm: run_inprocess(  # noqa: E731
            model, category, cases, arm, args.max_tokens, args.samples, args.temperature
        )
    else:
        import openai

        url = args.url
        if url is None:
            server = _start_server(args.model, args.port)
            url = f"http://127.0.0.1:{args.port}/v1"
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=1200)
        name = client.models.list().data[0].id
        run = lambda category, cases, arm: run_server(  # noqa: E731
            client, name, category, cases, arm, args.max_tokens, args.concurrency, args.samples, args.temperature
        )
    results: dict[tuple[str, str], Tally] = {}
    dump = []
    try:
        for category in args.categories:
            cases = load_cases(args.data, category, args.limit)
            for arm in args.arms:
                if arm == "required" and category == "irrelevance":
                    continue  # a forced call is wrong by definition there
                start = time.perf_counter()
                outcomes = run(category, cases, arm)
                for name, listed in (outcomes if isinstance(outcomes, dict) else {arm: outcomes}).items():
                    tally = Tally()
                    for outcome in listed:
                        tally.add(outcome)
                        dump.append({"category": category, "arm": name, **outcome.__dict__})
                    results[(category, name)] = tally
                    print(f"{category:18} {name:12} {tally.correct}/{tally.cases} correct, "
                          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
    _print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps(dump, indent=1, default=str))
    return 0


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f}% ({a}/{b})" if b else "n/a"


def _per(total: int, cases: int) -> str:
    return f"{total / cases:.0f}" if cases and total else "n/a"


def _row(category: str, arm: str, t: Tally) -> str:
    return (
        f"| {category} | {arm} | {_pct(t.correct, t.cases)} | {_pct(t.parsed, t.attempted)} "
        f"| {_pct(t.valid, t.parsed)} | {t.cut} | {_per(t.generated, t.cases)} | {_per(t.forwarded, t.cases)} |"
    )


def _print_table(results: dict[tuple[str, str], Tally], args) -> None:
    bon = f"; bon: best-of-{args.samples} at temperature {args.temperature}" if "bon" in args.arms else ""
    print(f"\nBFCL AST, {args.model}, mode={args.mode}, first {args.limit} cases per category, greedy{bon}\n")
    print("| category | arm | accuracy | call outputs that parse | parsed calls that validate | cut by max_tokens "
          "| tokens generated / case | tokens forwarded / case |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    totals: dict[str, Tally] = {}
    for (category, arm), t in results.items():
        print(_row(category, arm, t))
        total = totals.setdefault(arm, Tally())
        for name in ("cases", "correct", "attempted", "parsed", "valid", "cut", "generated", "forwarded"):
            setattr(total, name, getattr(total, name) + getattr(t, name))
        total.invalid += t.invalid
    for arm, t in totals.items():
        print(_row("**all**", arm, t))
    for arm, t in totals.items():
        if t.invalid and (args.show_invalid or arm != "free"):
            print(f"\n{arm}: outputs that attempt calls but do not parse or validate:")
            for line in t.invalid:
                print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
