"""Every search calls a reward through the one protocol (rewards.Reward): steps of partial outputs
through `score_steps`, each frontier of whole outputs through one `score_batch` call, with the
outputs' token log-probabilities. Fast, on the tiny random model."""

import pytest
from recording_reward import RecordingReward

import searchdec as sd

PROMPT = "hello"


def test_best_of_n_scores_its_samples_in_one_batch_with_their_logprobs(tiny):
    reward = RecordingReward()
    out = sd.generate(tiny, PROMPT, max_tokens=6, search=sd.BestOfN(4, reward=reward, sample=sd.Sample(seed=1)))
    assert len(reward.batch_calls) == 1 and not reward.steps_calls
    call = reward.batch_calls[0]
    assert len(call.outputs) == 4 and set(call.outputs) == {h.text for h in out.hypotheses}
    assert sorted(map(tuple, call.logprobs)) == sorted(tuple(h.token_logprobs) for h in out.hypotheses)


@pytest.mark.parametrize("search", [sd.StepBeam, sd.DVTS], ids=["step-beam", "dvts"])
def test_step_searches_hand_the_reward_its_steps(tiny, search):
    reward = RecordingReward()
    spec = search(2, 2, reward, step=" ", max_step_tokens=3, sample=sd.Sample(seed=2))
    sd.generate(tiny, PROMPT, max_tokens=9, search=spec)
    assert reward.steps_calls and not reward.batch_calls
    for call in reward.steps_calls:
        assert call.prompt == tiny.decode(tiny.encode(PROMPT))
        assert all(isinstance(step, str) and step for step in call.steps)
        assert not call.steps[0].startswith("['")  # not a printed Python list (the old bug)


def test_a_plain_callable_is_a_step_reward_of_the_steps_in_a_step_search(tiny):
    seen = []

    def prm(prompt, steps):
        seen.append(steps)
        return [1.0] * len(steps)

    sd.generate(tiny, PROMPT, max_tokens=6, search=sd.StepBeam(2, 2, prm, step=" ", max_step_tokens=3))
    assert seen and all(isinstance(steps, list) for steps in seen)


def test_mcts_scores_each_round_in_one_batch_and_no_text_twice(tiny):
    reward = RecordingReward()
    spec = sd.MCTS(12, reward=reward, max_children=3, parallel=4)
    sd.generate(tiny, PROMPT, max_tokens=5, search=spec)
    assert reward.batch_calls and not reward.steps_calls
    assert all(len(call.outputs) <= 4 and call.logprobs is not None for call in reward.batch_calls)
    scored = [text for call in reward.batch_calls for text in call.outputs]
    assert len(scored) == len(set(scored))  # a round's texts in one call; a text once per search
    assert len(reward.batch_calls) < len(scored)  # some round scored several leaves together


def test_astar_scores_partial_outputs_by_their_steps_and_lookaheads_in_batches(tiny):
    reward = RecordingReward()
    sd.generate(tiny, PROMPT, max_tokens=8, search=sd.AStar(reward, budget=40, step=" ", expansions=2))
    assert reward.steps_calls and not reward.batch_calls
    ahead = RecordingReward()
    sd.generate(tiny, PROMPT, max_tokens=8, search=sd.AStar(ahead, budget=40, step=" ", expansions=2, lookahead=3))
    assert ahead.batch_calls and not ahead.steps_calls
    assert max(len(call.outputs) for call in ahead.batch_calls) > 1  # a round's new nodes together


def test_a_reward_that_reads_logprobs_gets_them_from_every_search(tiny):
    def mean(prompt, output, logprobs):
        return sum(logprobs) / max(len(logprobs), 1)

    for spec in (sd.BestOfN(3), sd.MCTS(4, max_children=2)):
        reward = RecordingReward(mean, uses_logprobs=True)
        out = sd.generate(tiny, PROMPT, max_tokens=5, search=spec, reward=reward)
        assert out.hypotheses and all(call.logprobs is not None for call in reward.batch_calls)
