"""Reward-guided speculative decoding: the reward decides, step by step, whose step is kept."""

import pytest
from tiny import tiny_model

import searchdec as sd
from searchdec.rewards import Reward


class Counting(Reward):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def _score(self, prompts, outputs):
        return [self.value] * len(outputs)


def test_every_step_is_the_drafts_when_the_reward_accepts_all(tiny):
    draft = tiny_model(seed=4)
    rsd = sd.RewardGuidedSpeculative(draft=draft, reward=Counting(1.0), threshold=0.5, step="\n", max_step_tokens=6)
    out = sd.generate(tiny, "q", max_tokens=18, search=rsd)
    assert out.stats.steps >= 2 and out.stats.draft_fraction == 1.0 and out.stats.target_tokens == 0
    assert out.stats.target_calls_avoided == out.stats.draft_tokens > 0
    assert out.finish_reason in ("stop", "length")


def test_every_step_is_the_targets_when_the_reward_rejects_all(tiny):
    draft = tiny_model(seed=4)
    rsd = sd.RewardGuidedSpeculative(draft=draft, reward=Counting(0.0), threshold=0.5, step="\n", max_step_tokens=6)
    out = sd.generate(tiny, "q", max_tokens=18, search=rsd)
    assert out.stats.draft_steps == 0 and out.stats.target_tokens > 0
    # The target writing every step from the same text is the target's own greedy output.
    assert out.text == sd.generate(tiny, "q", max_tokens=out.stats.target_tokens).text


def test_the_reward_sees_the_steps_so_far(tiny):
    seen = []

    def reward(prompt, output):
        seen.append(output)
        return 1.0

    rsd = sd.RewardGuidedSpeculative(draft=tiny_model(seed=4), reward=reward, step="\n", max_step_tokens=4)
    out = sd.generate(tiny, "q", max_tokens=12, search=rsd)
    assert len(seen) == out.stats.steps
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:]))


def test_log_probabilities_are_the_targets(tiny):
    rsd = sd.RewardGuidedSpeculative(draft=tiny_model(seed=4), reward=Counting(1.0), step="\n", max_step_tokens=5)
    out = sd.generate(tiny, "q", max_tokens=10, search=rsd)
    assert len(out.token_logprobs) == len(out.tokens)
    assert out.logprob == pytest.approx(sum(out.token_logprobs))


def test_bad_arguments(tiny):
    with pytest.raises(TypeError, match="draft"):
        sd.RewardGuidedSpeculative(draft="small", reward=Counting(1.0))
    with pytest.raises(ValueError, match="step"):
        sd.RewardGuidedSpeculative(draft=tiny, reward=Counting(1.0), step="")


def test_a_stop_string_ends_the_answer_and_is_cut_whichever_model_wrote_it(tiny):
    draft = tiny_model(seed=4)
    full = sd.generate(tiny, "q:", max_tokens=30, search=sd.RewardGuidedSpeculative(draft, Counting(0.0), step="\n"))
    stop = full.text[-4:-2]  # two characters near the end of the (target-written) answer
    assert len(full.text) > 10 and full.text.find(stop) > 0
    rsd = sd.RewardGuidedSpeculative(draft=draft, reward=Counting(0.0), threshold=0.5, step="\n")
    out = sd.generate(tiny, "q:", max_tokens=30, stop=[stop], search=rsd)
    assert out.finish_reason == "stop"
    assert out.text == full.text[: full.text.find(stop)]
