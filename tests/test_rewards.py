"""The reward layer: one protocol (batched, cached, per-step) and the built-in rewards."""

import hashlib
import json
import math
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from recording_reward import BatchCall, RecordingReward, StepsCall

import searchdec as sd
from searchdec.grammars.sql import spider_database
from searchdec.rewards import (
    Accepts,
    FunctionReward,
    JsonValid,
    MeanLogprob,
    PythonTests,
    Reward,
    SelfEvaluation,
    SqlExecution,
    as_reward,
)

DATA = Path(__file__).parent / "data"


# --- protocol ---------------------------------------------------------------------------------


class Length(Reward):
    def _score(self, prompts, outputs):
        return [float(len(o)) for o in outputs]


def test_scores_are_cached_and_batched():
    reward = Length()
    assert reward.score_batch(["p", "p", "q"], ["ab", "ab", "abc"]) == [2.0, 2.0, 3.0]
    assert (reward.calls, reward.scored) == (1, 2)  # one batch, the repeated output scored once
    assert reward("p", "ab") == 2.0 and reward.calls == 1  # from the cache


def test_steps_score_each_prefix_by_default():
    assert Length().score_steps("p", ["ab", "c", "de"]) == [2.0, 3.0, 5.0]


def test_callables_and_weighted_sums():
    one = as_reward(lambda output: len(output))
    two = FunctionReward(lambda prompt, output: float(prompt == output))
    combined = 0.5 * one + 2 * two
    assert combined.score("ab", "ab") == pytest.approx(0.5 * 2 + 2 * 1)
    assert (one + (lambda o: 10.0)).score("x", "abc") == 13.0
    with pytest.raises(TypeError, match="takes"):
        FunctionReward(lambda a, b, c: 0)
    with pytest.raises(TypeError, match="callable"):
        as_reward(3)
    with pytest.raises(ValueError, match="2 prompts but 1 outputs"):
        one.score_batch(["a", "b"], ["c"])


class LogprobSum(Reward):
    uses_logprobs = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def _score(self, prompts, outputs, logprobs):
        self.seen.append(logprobs)
        return [sum(values) for values in logprobs]


def test_rewards_that_do_not_read_logprobs_ignore_them():
    assert Length().score_batch(["p", "p"], ["ab", "c"], logprobs=[[-1.0, -2.0], [-3.0]]) == [2.0, 1.0]
    with pytest.raises(ValueError, match="1 logprobs lists but 2 outputs"):
        Length().score_batch(["p", "p"], ["ab", "c"], logprobs=[[-1.0]])


def test_a_reward_that_reads_logprobs_gets_them_and_caches_by_them():
    reward = LogprobSum()
    assert reward.score_batch(["p", "p", "p"], ["a", "a", "a"], logprobs=[[-1.0], [-2.0], [-1.0]]) == [-1.0, -2.0, -1.0]
    assert reward.seen == [[[-1.0], [-2.0]]]  # one batch; the same text with other logprobs is another key
    assert reward.score("p", "a", logprobs=[-2.0]) == -2.0 and reward.calls == 1  # from the cache


def test_a_reward_that_reads_logprobs_refuses_text_alone():
    for call in (
        lambda r: r.score_batch(["p"], ["a"]),
        lambda r: r("p", "a"),
        lambda r: r.score_steps("p", ["a", "b"]),
    ):
        with pytest.raises(ValueError, match="LogprobSum scores an output by its token log-probabilities"):
            call(LogprobSum())


def test_weighted_sums_pass_logprobs_to_the_terms_that_read_them():
    combined = 2 * LogprobSum() + Length()
    assert combined.uses_logprobs and not (2 * Length()).uses_logprobs
    assert combined.score_batch(["p"], ["abc"], logprobs=[[-0.5, -1.0]]) == [2 * -1.5 + 3.0]
    with pytest.raises(ValueError, match="log-probabilities"):
        combined.score("p", "abc")


def test_mean_logprob_is_the_geometric_mean_token_probability():
    logprobs = [[-1.0, -2.0], [-0.1], []]
    scores = MeanLogprob().score_batch(["p"] * 3, ["x", "y", "z"], logprobs=logprobs)
    assert scores == pytest.approx([math.exp(-1.5), math.exp(-0.1), 1.0])  # no tokens: mean 0
    assert MeanLogprob(log=True).score_batch(["p"] * 3, ["x", "y", "z"], logprobs=logprobs) == [-1.5, -0.1, 0.0]
    with pytest.raises(ValueError, match="log-probabilities"):
        MeanLogprob()("p", "x")


def test_recording_reward_records_batches_and_steps_apart():
    reward = RecordingReward()
    assert reward.score_batch(["p", "p"], ["ab", "c"], logprobs=[[-1.0, -1.0], [-2.0]]) == [2.0, 1.0]
    assert reward.score_steps("p", ["ab", "c"]) == [2.0, 3.0]
    assert reward("q", "abc") == 3.0
    assert reward.batch_calls == [
        BatchCall(["p", "p"], ["ab", "c"], [[-1.0, -1.0], [-2.0]]),
        BatchCall(["q"], ["abc"], None),
    ]
    assert reward.steps_calls == [StepsCall("p", ["ab", "c"])]


# --- structure -------------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def test_json_valid():
    reward = JsonValid(SCHEMA)
    assert reward("", '{"n": 3}') == 1.0
    assert reward("", '{"n": "3"}') == 0.0
    assert reward("", "{not json") == 0.0
    assert 0.0 < JsonValid(SCHEMA, partial=True)("", '{"n": "3"}') < 1.0
    with pytest.raises(sd.SchemaError):
        JsonValid({"type": "nope"})


def test_grammar_acceptance(tiny):
    reward = Accepts(sd.regex(r"[0-9]{3}"), tiny)
    assert reward.score_batch(["", "", ""], ["123", "12", "12a"]) == [1.0, 0.0, 0.0]


# --- SQL ---------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store.sqlite"
    shutil.copy(DATA / "sqlite" / "department_store.sqlite", path)
    return path


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_sql_modes(store):
    tables = [r[0] for r in sqlite3.connect(store).execute("SELECT name FROM sqlite_master WHERE type='table'")]
    table = tables[0]
    count = sqlite3.connect(store).execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    assert SqlExecution(store)("", f"SELECT * FROM {table}") == 1.0
    assert SqlExecution(store)("", "SELECT * FROM no_such_table") == 0.0
    assert SqlExecution(store, mode="rows")("", f"SELECT * FROM {table} WHERE 0") == 0.0
    gold = f"SELECT count(*) FROM {table}"
    match = SqlExecution(store, mode="match", expected=gold)
    assert match("", f"SELECT COUNT(*) FROM {table} WHERE 1") == 1.0
    assert match("", f"SELECT count(*) + 1 FROM {table}") == 0.0
    assert SqlExecution(store, mode="match", expected=[(count,)])("", gold) == 1.0


@pytest.mark.parametrize(
    "hostile",
    [
        "DROP TABLE {table}",
        "DELETE FROM {table}",
        "INSERT INTO {table} DEFAULT VALUES",
        "UPDATE {table} SET rowid = rowid + 1",
        "ATTACH DATABASE 'elsewhere.sqlite' AS other",
        "PRAGMA writable_schema = ON",
        "CREATE TABLE evil (x)",
        "SELECT 1; DROP TABLE {table}",
    ],
)
def test_sql_cannot_change_the_database(store, hostile):
    table = sqlite3.connect(store).execute("SELECT name FROM sqlite_master WHERE type='table'").fetchone()[0]
    before = digest(store)
    reward = SqlExecution(store)
    assert reward("", hostile.format(table=table)) == 0.0
    assert digest(store) == before


def test_sql_runaway_query_is_cut_by_the_time_limit(store):
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    reward = SqlExecution(store, timeout=0.5)
    assert reward("", endless) == 0.0
    assert "timed out" in reward.explain(endless)


def test_sql_bad_arguments(store, tmp_path):
    with pytest.raises(sd.DatabaseNotFoundError):
        SqlExecution(tmp_path / "missing.sqlite")
    with pytest.raises(ValueError, match="mode"):
        SqlExecution(store, mode="fast")
    with pytest.raises(ValueError, match="expected"):
        SqlExecution(store, mode="match")


def in_memory_copy(path) -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    sqlite3.connect(path).backup(connection)
    return connection


def test_sql_on_a_connection_scores_as_on_its_file(store):
    table = sqlite3.connect(store).execute("SELECT name FROM sqlite_master WHERE type='table'").fetchone()[0]
    queries = [f"SELECT * FROM {table}", f"SELECT * FROM {table} WHERE 0", "SELECT * FROM no_such_table"]
    on_file = SqlExecution(store, mode="rows").score_batch([""] * 3, queries)
    assert on_file == [1.0, 0.0, 0.0]
    assert SqlExecution(in_memory_copy(store), mode="rows").score_batch([""] * 3, queries) == on_file
    assert SqlExecution(sqlite3.connect(store), mode="rows").score_batch([""] * 3, queries) == on_file


def test_sql_on_an_in_memory_connection_never_changes_it(store):
    connection = in_memory_copy(store)
    table = connection.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchone()[0]
    count = connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    reward = SqlExecution(connection, mode="match", expected=f"SELECT count(*) FROM {table}")
    for hostile in (f"DELETE FROM {table}", f"DROP TABLE {table}", "ATTACH DATABASE ':memory:' AS other"):
        assert reward("", hostile) == 0.0
    assert reward("", f"SELECT count(*) FROM {table}") == 1.0  # its own copy is intact too
    assert connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == count


def test_sql_on_a_spider_schema_database():
    entries = {e["db_id"]: e for e in json.loads((DATA / "spider" / "tables.json").read_text())}
    gold = [g["query"] for g in json.loads((DATA / "spider" / "dev_sample.json").read_text())]
    reward = SqlExecution(spider_database(entries["concert_singer"]))
    assert reward("", "SELECT count(*) FROM singer") == 1.0
    assert reward("", "SELECT no_such_column FROM singer") == 0.0
    assert "no such column" in reward.explain("SELECT no_such_column FROM singer")
    scores = []  # the server scores on its worker thread, not the one that made the connection
    worker = threading.Thread(target=lambda: scores.extend(reward.score_batch([""] * 15, gold[:15])))
    worker.start()
    worker.join()
    assert scores == [1.0] * 15  # every concert_singer gold query runs against its schema


def test_sql_refuses_what_is_not_a_database(store):
    with pytest.raises(TypeError, match="SQLite file path or a sqlite3.Connection.*got dict"):
        SqlExecution({"db_id": "concert_singer"})
    closed = sqlite3.connect(":memory:")
    closed.close()
    with pytest.raises(ValueError, match="cannot read the sqlite3.Connection"):
        SqlExecution(closed)


# --- Python ------------------------------------------------------------------------------------

TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(0, 0) == 0"]


def test_python_tests_score_the_fraction_passed():
    reward = PythonTests(TESTS)
    assert reward("", "```python\ndef add(a, b):\n    return a + b\n```") == 1.0
    assert reward("", "def add(a, b):\n    return a * b + (a == -1)") == pytest.approx(2 / 3)  # fails add(2, 3)
    assert reward("", "def add(a, b) return") == 0.0
    assert "SyntaxError" in reward.run("def add(a, b) return").error


def test_python_infinite_loop_is_killed():
    run = PythonTests(TESTS, timeout=1.0).run("while True:\n    pass")
    assert run.timed_out and run.score == 0.0


def test_python_fork_bomb_is_contained():
    run = PythonTests(TESTS, timeout=2.0).run("import os\nwhile True:\n    os.fork()")
    assert run.score == 0.0 and "os.fork" in run.error


def test_python_cannot_write_outside_its_directory(tmp_path):
    target = tmp_path / "escaped.txt"
    run = PythonTests(TESTS).run(f"open({str(target)!r}, 'w').write('x')\ndef add(a, b): return a + b")
    assert run.score == 0.0 and "outside the sandbox" in run.error
    assert not target.exists()
    inside = PythonTests(TESTS).run("open('scratch.txt', 'w').write('x')\ndef add(a, b): return a + b")
    assert inside.score == 1.0  # its own directory is writable


def test_python_cannot_delete_outside_its_directory(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    run = PythonTests(TESTS).run(f"import os\nos.remove({str(victim)!r})")
    assert run.score == 0.0 and victim.read_text() == "keep"


@pytest.mark.parametrize(
    "code, blocked",
    [
        ("import socket\nsocket.create_connection(('127.0.0.1', 80))", "socket"),
        ("import subprocess\nsubprocess.run(['true'])", "subprocess.Popen"),
        ("import os\nos.system('true')", "os.system"),
        ("import ctypes\nctypes.CDLL(None)", "ctypes"),
    ],
)
def test_python_processes_network_and_native_code_are_refused(code, blocked):
    run = PythonTests(TESTS).run(code)
    assert run.score == 0.0 and blocked in run.error


def test_python_memory_bomb_is_contained():
    run = PythonTests(TESTS, memory_mb=128).run("x = bytearray(1 << 30)")
    assert run.score == 0.0 and ("MemoryError" in (run.error or "") or "killed" in (run.error or ""))


def test_python_bad_arguments():
    with pytest.raises(ValueError, match="tests"):
        PythonTests([])
    with pytest.raises(ValueError, match="timeout"):
        PythonTests(TESTS, timeout=0)


# --- model-based (tiny random models from a config: the computation, not the judgement) -------


def test_step_tag_prm_scores_each_step_at_its_tag():
    import torch
    from tiny import byte_tokenizer, reward_model_config
    from transformers import LlamaForCausalLM

    from searchdec.rewards import ProcessRewardModel

    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(reward_model_config(tokenizer))
    prm = ProcessRewardModel(model, tokenizer, step_tag="#", good="+", bad="-")
    steps = ["2 + 2 = 4", "so the answer is 4"]
    scores = prm.score_steps("What is 2 + 2?", steps)
    # By hand: one forward over prompt + steps with tags; softmax over (+, -) at each tag position.
    text = "What is 2 + 2?\n" + "".join(step + "#\n" for step in steps)
    ids = tokenizer(text)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    tag, plus, minus = (tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in "#+-")
    positions = [i for i, t in enumerate(ids) if t == tag]
    expected = [logits[p, [plus, minus]].softmax(-1)[0].item() for p in positions]
    assert scores == pytest.approx(expected, abs=1e-5)
    # Batched with another solution of a different length: the same scores (padding is masked).
    both = prm.score_solutions(["What is 2 + 2?", "Q"], [steps, ["a", "b", "c"]])
    assert both[0] == pytest.approx(expected, abs=1e-5) and len(both[1]) == 3
    with pytest.raises(ValueError, match="single token"):
        ProcessRewardModel(model, tokenizer, good="++")


def test_outcome_reward_model_is_the_positive_label_probability():
    import torch
    from tiny import byte_tokenizer, reward_model_config
    from transformers import LlamaForSequenceClassification

    from searchdec.rewards import OutcomeRewardModel

    tokenizer = byte_tokenizer()
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(reward_model_config(tokenizer, num_labels=2))
    orm = OutcomeRewardModel(model, tokenizer)
    scores = orm.score_batch(["q", "q"], ["short", "a longer answer"])
    for output, score in zip(["short", "a longer answer"], scores):
        with torch.no_grad():
            logits = model(**tokenizer(["q\n" + output], return_tensors="pt")).logits[0]
        assert score == pytest.approx(logits.softmax(-1)[1].item(), abs=1e-5)


def test_self_evaluation_is_p_yes_over_yes_and_no(tiny):
    import torch

    from searchdec.rewards import SelfEvaluation
    from searchdec.search import Node

    reward = SelfEvaluation(tiny)
    score = reward("What is 2 + 2?", "4")
    question = reward.template.format(question="What is 2 + 2?", output="4")
    ids = tiny.apply_chat_template([{"role": "user", "content": question}])
    probs = tiny.logits([Node(tuple(ids))])[0].softmax(-1)
    yes = probs[sorted({tiny.encode(w, add_special_tokens=False)[0] for w in ("Yes", " Yes")})].sum()
    no = probs[sorted({tiny.encode(w, add_special_tokens=False)[0] for w in ("No", " No")})].sum()
    assert score == pytest.approx((yes / (yes + no)).item(), abs=1e-5)
    assert torch.isfinite(torch.tensor(score))


def test_self_evaluation_asks_about_the_last_user_turn_of_a_rendered_chat(tiny):
    reward = SelfEvaluation(tiny)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2 + 2?"},
    ]
    rendered = tiny.decode(tiny.apply_chat_template(messages))
    assert reward.question_of(rendered) == "What is 2 + 2?"
    assert reward.question_of("What is 2 + 2?") == "What is 2 + 2?"  # a plain prompt is the question
    assert SelfEvaluation(tiny, question="Name a fruit.").question_of(rendered) == "Name a fruit."
    assert reward.score(rendered, "4") == pytest.approx(reward.score("What is 2 + 2?", "4"))


def test_self_evaluation_finds_the_question_in_the_default_models_chat(smollm):
    reward = SelfEvaluation(smollm)
    for messages in (
        [{"role": "user", "content": "What is 2 + 2?"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is 2 + 2?\nShow your work."},
        ],
    ):
        rendered = smollm.decode(smollm.apply_chat_template(messages))
        assert reward.question_of(rendered) == messages[-1]["content"]


def test_self_evaluation_bad_arguments(tiny):
    with pytest.raises(ValueError, match="template="):
        SelfEvaluation(tiny, question=SelfEvaluation.TEMPLATE)
    with pytest.raises(ValueError, match="output"):
        SelfEvaluation(tiny, template="Is {question} right?")
