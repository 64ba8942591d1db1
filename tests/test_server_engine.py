"""The server's engine and output assembly on a tiny random model: continuous batching gives each
request exactly what `sd.generate` gives it alone; streamed tool-call pieces add up to the calls."""

from __future__ import annotations

import json
import threading

import pytest

import searchdec as sd
from searchdec.search.rows import Stopping

pytest.importorskip("fastapi")
from searchdec.server.engine import Done, Engine, Failed, Finished, Job, Tokens  # noqa: E402
from searchdec.server.output import scan_calls  # noqa: E402


class Collector:
    def __init__(self, n: int) -> None:
        self.tokens = [[] for _ in range(n)]
        self.reasons = [None] * n
        self.done = threading.Event()
        self.error = None

    def __call__(self, event) -> None:
        if isinstance(event, Tokens):
            self.tokens[event.choice].extend(event.tokens)
        elif isinstance(event, Finished):
            self.reasons[event.choice] = event.reason
        elif isinstance(event, Failed):
            self.error = event.error
            self.done.set()
        elif isinstance(event, Done):
            self.done.set()


def job(model, prompt: str, collector: Collector, max_tokens: int, search=None, n: int = 1, constraint=None) -> Job:
    stopping = Stopping(max_tokens, model.eos_token_ids, (), model.context_window)
    compiled = constraint.compile(model) if constraint is not None else None
    return Job(model.encode(prompt), search or sd.Greedy(), n, stopping, collector, compiled)


def test_requests_joining_a_running_batch_get_what_they_would_get_alone(tiny):
    prompts = ["hello there", "a", "the quick brown fox", "zz"]
    constraint = sd.regex(r"[a-z ]{1,30}")
    expected = [sd.generate(tiny, p, max_tokens=20, constraint=constraint if i % 2 else None).tokens
                for i, p in enumerate(prompts)]  # fmt: skip
    engine = Engine(tiny, max_rows=8)
    engine.start()
    collectors = []
    for i, prompt in enumerate(prompts):  # staggered: each joins while the earlier ones decode
        collector = Collector(1)
        collectors.append(collector)
        engine.submit(job(tiny, prompt, collector, 20, constraint=constraint if i % 2 else None))
        threading.Event().wait(0.01)
    for collector in collectors:
        assert collector.done.wait(60) and collector.error is None
    engine.stop()
    assert [c.tokens[0] for c in collectors] == expected
    assert engine.stats.max_batch_rows > 1 and engine.stats.completed == 4
    assert len(tiny.cache) == 0  # every finished request's cache entries are freed


def test_seeded_samples_match_generate(tiny):
    search = sd.Sample(temperature=1.0, n=3, seed=5)
    expected = sd.generate(tiny, "abc", max_tokens=12, search=search)
    engine = Engine(tiny)
    engine.start()
    collector = Collector(3)
    engine.submit(job(tiny, "abc", collector, 12, search=search, n=3))
    assert collector.done.wait(60)
    engine.stop()
    assert collector.tokens == [h.tokens for h in expected.hypotheses]
    assert collector.reasons == [h.finish_reason for h in expected.hypotheses]


def test_a_cancelled_job_leaves_the_batch_and_frees_its_cache(tiny):
    engine = Engine(tiny)
    engine.start()
    collector = Collector(1)
    running = job(tiny, "long", collector, 200)
    engine.submit(running)
    while not collector.tokens[0]:
        threading.Event().wait(0.005)
    running.cancel()
    engine.wake()
    for _ in range(400):
        if engine.stats.running == 0:
            break
        threading.Event().wait(0.01)
    engine.stop()
    assert engine.stats.cancelled == 1 and engine.stats.rows == 0
    assert len(tiny.cache) == 0


def test_stop_finishes_queued_jobs_first(tiny):
    engine = Engine(tiny, max_rows=1)
    engine.start()
    collectors = [Collector(1) for _ in range(3)]
    for collector in collectors:
        engine.submit(job(tiny, "x", collector, 10))
    engine.stop()
    assert all(c.done.is_set() and len(c.tokens[0]) > 0 for c in collectors)
    with pytest.raises(RuntimeError):
        engine.submit(job(tiny, "x", Collector(1), 10))


def test_streamed_call_pieces_add_up_to_the_calls():
    text = '[{"name": "f", "arguments": {"s": "a}\\"{,", "n": [1, {"x": 2}]}}, {"name": "g.h", "arguments": {}}]'
    sent: dict[int, str] = {}
    names: dict[int, str] = {}
    for end in range(len(text) + 1):
        for index, (name, arguments) in enumerate(scan_calls(text[:end])):
            names.setdefault(index, name)
            assert names[index] == name
            assert arguments.startswith(sent.get(index, ""))
            sent[index] = arguments
    calls = json.loads(text)
    assert [names[i] for i in sorted(names)] == [c["name"] for c in calls]
    assert [json.loads(sent[i]) for i in sorted(sent)] == [c["arguments"] for c in calls]


def test_a_name_is_not_reported_until_complete():
    assert scan_calls('[{"name": "get_wea') == []
    assert scan_calls('<tool_call>\n{"name": "get_weather", "arguments": {"ci') == [("get_weather", '{"ci')]


# --- whole searches ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "search", [sd.Beam(width=3, num_return=2), sd.DiverseBeam(width=4, groups=2, num_return=2), sd.BestFirstBeam(3)]
)
def test_a_whole_search_on_the_worker_gives_what_generate_gives(tiny, search):
    constraint = sd.regex(r"[a-z ]{1,30}")
    expected = sd.generate(tiny, "hello there", max_tokens=12, search=search, constraint=constraint)
    engine = Engine(tiny)
    engine.start()
    beside = Collector(1)  # a decoding job in the batch while the search runs
    engine.submit(job(tiny, "a", beside, 30))
    collector = Collector(search.n)
    engine.submit(job(tiny, "hello there", collector, 12, search=search, n=search.n, constraint=constraint))
    assert collector.done.wait(60) and beside.done.wait(60) and collector.error is None
    engine.stop()
    assert collector.tokens == [h.tokens for h in expected.hypotheses]
    assert collector.reasons == [h.finish_reason for h in expected.hypotheses]
    assert beside.tokens[0] == sd.generate(tiny, "a", max_tokens=30).tokens
    assert len(tiny.cache) == 0


def test_a_cancelled_whole_search_stops_at_its_next_forward_and_frees_its_cache(tiny):
    engine = Engine(tiny)
    collector = Collector(1)
    forwards = []
    searching = job(tiny, "long", collector, 500, search=sd.Beam(width=4))
    original = tiny.logits_last

    def counted(nodes, keep):
        forwards.append(len(nodes))
        if len(forwards) == 5:
            searching.cancel()  # as a client that goes away mid-search
        return original(nodes, keep)

    tiny.logits_last = counted
    engine.start()
    engine.submit(searching)
    for _ in range(1000):
        if engine.stats.cancelled:
            break
        threading.Event().wait(0.01)
    engine.stop()
    assert engine.stats.cancelled == 1 and engine.stats.running == 0
    assert len(forwards) == 5  # no forward after the cancellation
    assert not collector.done.is_set() and collector.tokens == [[]]
    assert len(tiny.cache) == 0


def test_the_batch_keeps_decoding_while_a_whole_search_runs(tiny):
    engine = Engine(tiny)
    order = []

    class Recorder(Collector):
        def __init__(self, name: str, n: int) -> None:
            super().__init__(n)
            self.name = name

        def __call__(self, event) -> None:
            super().__call__(event)
            if isinstance(event, Done):
                order.append(self.name)

    search, beside = Recorder("search", 1), Recorder("beside", 1)
    engine.start()
    engine.submit(job(tiny, "long", search, 120, search=sd.Beam(width=4, early_stopping="never")))
    while engine.stats.running == 0:
        threading.Event().wait(0.002)
    engine.submit(job(tiny, "a", beside, 20))  # arrives while the search runs
    assert search.done.wait(60) and beside.done.wait(60)
    engine.stop()
    assert order == ["beside", "search"]
    assert beside.tokens[0] == sd.generate(tiny, "a", max_tokens=20).tokens


def test_searches_waiting_together_share_one_search_call(tiny):
    search = sd.Beam(width=2, num_return=2)
    prompts = ["hello there", "a", "the quick brown fox"]
    expected = sd.generate(tiny, prompts, max_tokens=10, search=search)
    engine = Engine(tiny)
    collectors = [Collector(2) for _ in prompts]
    for prompt, collector in zip(prompts, collectors):
        engine.submit(job(tiny, prompt, collector, 10, search=search, n=2))
    seeded = sd.BestOfN(n=2, aggregate="majority", sample=sd.Sample(seed=1))
    alone = [Collector(1), Collector(1)]  # seeded samples never share a call: their draws would depend on it
    for collector in alone:
        engine.submit(job(tiny, "abc", collector, 6, search=seeded))
    engine.start()
    assert all(c.done.wait(60) and c.error is None for c in collectors + alone)
    engine.stop()
    assert engine.stats.searches == 3
    assert [c.tokens for c in collectors] == [[h.tokens for h in out.hypotheses] for out in expected]
    assert alone[0].tokens == alone[1].tokens
    assert len(tiny.cache) == 0


@pytest.mark.parametrize(
    "search",
    [
        sd.Sample(temperature=0.8, n=2, seed=4, presence_penalty=1.5, frequency_penalty=0.5, logit_bias={104: 2.0}),
        sd.Greedy(repetition_penalty=1.4, no_repeat_ngram_size=2),
    ],
    ids=["openai-penalties", "greedy-processors"],
)
def test_batched_rows_with_logit_processors_get_what_generate_gives(tiny, search):
    """The continuous batch applies each request's processors over its own rows' history, whatever
    else decodes beside it."""
    expected = sd.generate(tiny, "abab abab", max_tokens=20, search=search)
    engine = Engine(tiny, max_rows=8)
    engine.start()
    beside, collector = Collector(1), Collector(search.n)
    engine.submit(job(tiny, "zz top", beside, 20))
    engine.submit(job(tiny, "abab abab", collector, 20, search=search, n=search.n))
    assert collector.done.wait(60) and collector.error is None and beside.done.wait(60)
    engine.stop()
    assert collector.tokens == [h.tokens for h in expected.hypotheses]
