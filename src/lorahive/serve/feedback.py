"""What one feedback event teaches: the rule from (reward, correction) to a training example.

    a correction                    → (prompt, correction), whatever the reward says
    no correction, reward ≥ bar     → (prompt, the completion itself): the answer was good, learn it
    no correction, reward < bar     → nothing learned; recorded as a negative (``source: "negative"``)
    no correction, empty completion → nothing learned (``source: "empty"``)

``bar`` is ``Settings.reward_threshold`` (``lorahive serve --reward-threshold``, default 0.5:
a thumbs-up on a 0/1 or a −1/1 scale). The example is learned on the agent's own levels at
once, and joins the swarm proposals of the next serve tick (:mod:`lorahive.serve.swarm_feed`).
Low rewards are not used as negatives (no unlikelihood objective): they are only recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ``source`` of a feedback event that teaches something.
TEACHES = ("correction", "reward")


@dataclass(frozen=True)
class Lesson:
    """What a feedback event teaches: ``source`` (correction, reward, negative, empty) and the answer to learn, if any."""

    source: str
    answer: str | None

    @property
    def learns(self) -> bool:
        return self.answer is not None


def lesson(answer: str, reward: float | None, correction: str | None, threshold: float) -> Lesson:
    """The rule of this module's docstring, for a completion ``answer`` and its feedback."""
    if correction is not None:
        return Lesson("correction", correction)
    if reward is None or reward < threshold:
        return Lesson("negative", None)
    if not answer.strip():
        return Lesson("empty", None)
    return Lesson("reward", answer)
