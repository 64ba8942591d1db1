"""The built-in rewards on every path: each pickles (an executor ships it to its workers) and its copy
scores the same; the server's best-of-N rewards are the `rewards.*` a script uses, asking the same
question about the same conversation."""

import math
import pickle
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from recording_reward import BatchCall, RecordingReward, StepsCall
from tiny import byte_tokenizer, reward_model_config
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

import searchdec as sd
from searchdec import rewards
from searchdec.server import searches

DATA = Path(__file__).parent / "data"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
TABLE = "SELECT * FROM Customers"
OUTPUTS = ['{"n": 3}', "SELECT count(*) FROM Customers", "def add(a, b):\n    return a + b", "123\nso 4"]
LOGPROBS = [[-0.5, -1.0], [-2.0], [-0.1, -0.2, -0.3], []]


def prm() -> rewards.ProcessRewardModel:
    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    return rewards.ProcessRewardModel(LlamaForCausalLM(reward_model_config(tokenizer)), tokenizer, step_tag="#")


def orm() -> rewards.OutcomeRewardModel:
    tokenizer = byte_tokenizer()
    torch.manual_seed(1)
    return rewards.OutcomeRewardModel(
        LlamaForSequenceClassification(reward_model_config(tokenizer, num_labels=2)), tokenizer
    )


def in_memory_store() -> sqlite3.Connection:
    connection = sqlite3.connect(":memory:")
    sqlite3.connect(DATA / "sqlite" / "department_store.sqlite").backup(connection)
    return connection


BUILT_IN = {
    "json-valid": lambda tiny: rewards.JsonValid(SCHEMA, partial=True),
    "accepts": lambda tiny: rewards.Accepts(sd.regex(r"[0-9]{3}(\nso [0-9])?"), tiny),
    "sql-path": lambda tiny: rewards.SqlExecution(DATA / "sqlite" / "department_store.sqlite", mode="rows"),
    "sql-connection": lambda tiny: rewards.SqlExecution(in_memory_store(), mode="match", expected=[(15,)]),
    "python-tests": lambda tiny: rewards.PythonTests(["assert add(2, 3) == 5"]),
    "mean-logprob": lambda tiny: rewards.MeanLogprob(),
    "self-evaluation": lambda tiny: rewards.SelfEvaluation(tiny),
    "process-reward-model": lambda tiny: prm(),
    "outcome-reward-model": lambda tiny: orm(),
    "weighted": lambda tiny: 0.5 * rewards.JsonValid(SCHEMA) + 2 * rewards.MeanLogprob(),
}


@pytest.mark.parametrize("make", BUILT_IN.values(), ids=BUILT_IN.keys())
def test_every_built_in_reward_pickles_and_its_copy_scores_the_same(tiny, make):
    reward = make(tiny)
    prompts = ["What is 2 + 2?"] * len(OUTPUTS)
    before = reward.score_batch(prompts, OUTPUTS, logprobs=LOGPROBS)
    copy = pickle.loads(pickle.dumps(reward))
    assert copy is not reward and copy._cache == {}  # the cache stays behind
    assert copy.score_batch(prompts, OUTPUTS, logprobs=LOGPROBS) == pytest.approx(before, abs=1e-6)
    if not reward.uses_logprobs:
        steps = ["2 + 2 = 4\n", "so 4"]
        assert copy.score_steps(prompts[0], steps) == pytest.approx(reward.score_steps(prompts[0], steps), abs=1e-6)


def test_the_sql_copy_of_a_connection_is_its_own(tiny):
    reward = BUILT_IN["sql-connection"](tiny)
    assert reward("", "SELECT count(*) FROM Customers") == 1.0
    copy = pickle.loads(pickle.dumps(reward))
    assert copy._snapshot is not reward._snapshot
    assert copy("", "DELETE FROM Customers") == 0.0 and copy("", "SELECT count(*) FROM Customers") == 1.0


def test_self_evaluation_by_name_loads_where_it_runs_and_pickles_without_its_model(tiny, tmp_path):
    tiny.hf.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    reward = rewards.SelfEvaluation(str(tmp_path))
    shipped = pickle.dumps(reward)
    assert len(shipped) < 10_000  # the recipe, not the weights
    score = reward("What is 2 + 2?", "4")
    assert score == pytest.approx(rewards.SelfEvaluation(tiny)("What is 2 + 2?", "4"), abs=1e-5)
    assert len(pickle.dumps(reward)) < 10_000  # still the recipe once loaded
    assert pickle.loads(shipped)("What is 2 + 2?", "4") == pytest.approx(score, abs=1e-6)
    shutil.rmtree(tmp_path)


def test_accepts_made_from_a_compiled_constraint_says_why_it_cannot_be_pickled(tiny):
    reward = rewards.Accepts(sd.regex("[0-9]+").compile(tiny), tiny)
    with pytest.raises(TypeError, match="pass the spec"):
        pickle.dumps(reward)


# --- the server's built-in rewards are the scripts' -------------------------------------------

MESSAGES = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2 + 2?"},
]


def test_the_server_best_of_n_ranks_by_rewards_mean_logprob(tiny):
    spec = searches.build({"algorithm": "best_of_n", "n": 3, "seed": 1}, searches.SearchContext(2, tiny))
    assert isinstance(spec, sd.BestOfN) and type(spec.reward) is rewards.MeanLogprob and not spec.reward.log
    spec = searches.build({"algorithm": "best_of_n", "reward": "self_eval"}, searches.SearchContext(2, tiny))
    assert type(spec.reward) is rewards.SelfEvaluation and spec.reward.fixed_question is None


def test_script_and_server_self_evaluation_ask_the_same_question(tiny, monkeypatch):
    asked = []
    question_of = rewards.SelfEvaluation.question_of
    monkeypatch.setattr(
        rewards.SelfEvaluation, "question_of", lambda self, prompt: asked.append(question_of(self, prompt)) or asked[-1]
    )
    server = searches.build(
        {"algorithm": "best_of_n", "n": 3, "reward": "self_eval", "seed": 1}, searches.SearchContext(2, tiny)
    )
    sd.generate(tiny, MESSAGES, max_tokens=4, search=server)
    from_server, asked[:] = list(asked), []
    script = sd.BestOfN(3, reward=rewards.SelfEvaluation(tiny), sample=sd.Sample(temperature=0.8, seed=1))
    sd.generate(tiny, MESSAGES, max_tokens=4, search=script)
    assert from_server and set(from_server) == set(asked) == {"What is 2 + 2?"}


def test_mean_logprob_best_of_n_gives_the_same_ranking_on_an_executor(tiny):
    spec = searches.build({"algorithm": "best_of_n", "n": 4, "seed": 3}, searches.SearchContext(2, tiny))
    default = sd.generate(tiny, "hello", max_tokens=6, search=spec)
    with sd.InProcessExecutor() as executor:
        distributed = sd.generate(tiny, "hello", max_tokens=6, search=spec, executor=executor)
    for out in (default, distributed):
        for h in out.hypotheses:
            assert h.score == pytest.approx(math.exp(sum(h.token_logprobs) / max(len(h.token_logprobs), 1)))
    assert [h.tokens for h in default.hypotheses] == [h.tokens for h in distributed.hypotheses]


# --- a reward built where it runs -----------------------------------------------------------------

BUILDS = []


def recording_prm():
    BUILDS.append("built")
    return RecordingReward()


def test_a_lazy_reward_pickles_as_its_recipe_and_calls_the_built_rewards_methods():
    BUILDS.clear()
    lazy = rewards.Lazy(recording_prm)
    copy = pickle.loads(pickle.dumps(lazy))
    assert BUILDS == []  # nothing built where it was made or shipped
    assert copy.score_steps("p", ["ab", "c"]) == [2.0, 3.0]
    assert copy.score_batch(["p"], ["abc"], logprobs=[[-1.0]]) == [3.0]
    built = copy.built()
    assert BUILDS == ["built"]
    assert built.steps_calls == [StepsCall("p", ["ab", "c"])]  # its own score_steps, not prefixes as a batch
    assert built.batch_calls == [BatchCall(["p"], ["abc"], [[-1.0]])]
    assert pickle.loads(pickle.dumps(copy))._built is None  # still the recipe once built
    with pytest.raises(ValueError, match="uses_logprobs=True"):
        rewards.Lazy(rewards.MeanLogprob).score_batch(["p"], ["a"], logprobs=[[-1.0]])
    assert rewards.Lazy(rewards.MeanLogprob, uses_logprobs=True).score("p", "a", [-1.0]) == pytest.approx(math.exp(-1))
