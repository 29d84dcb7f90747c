"""The responses a contrast set is made from, and the edits that take text
from other responses of the set: a response to a different prompt of the same
task, and a named entity from another response of the same task.

Donors come only from the set being edited, so contrast pairs built from one
split's pairs hold text of that split only; each edit names the pairs it took
text from (:attr:`Edited.donors`).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from moerm.data.records import PreferencePair
from moerm.judges.contrast.fact_edits import by_words, entities, swap_entity
from moerm.judges.contrast.text import fences_balanced
from moerm.judges.programmatic import user_text
from moerm.text import render_conversation

SIDES = ("chosen", "rejected")


@dataclass(frozen=True)
class Source:
    """One response of a pair, to be edited."""

    pair: PreferencePair
    side: str  # "chosen" or "rejected": which of the pair's responses

    @property
    def response(self) -> str:
        return self.pair.chosen if self.side == "chosen" else self.pair.rejected

    @property
    def prompt(self) -> str:
        """The last user turn."""
        return user_text(self.pair.turns)

    @cached_property
    def conversation(self) -> str:
        return render_conversation(self.pair.turns)


@dataclass(frozen=True)
class Edited:
    """An edited response and the pairs other than its own whose text it holds."""

    text: str
    donors: tuple[str, ...] = ()


class ResponsePool:
    """The responses of a set of pairs by task, for the edits that borrow text."""

    def __init__(self, pairs: Iterable[PreferencePair]):
        self.by_task: dict[str, list[Source]] = defaultdict(list)
        for pair in pairs:
            for side in SIDES:
                self.by_task[pair.task].append(Source(pair, side))
        self._fluent: dict[str, list[Source]] = {}
        self._entities: dict[str, dict[str, list[Source]]] = {}
        self._by_words: dict[str, dict[int, list[str]]] = {}

    def fluent(self, task: str) -> list[Source]:
        """The task's responses that are as good as the set has: the
        human-chosen side of non-tie pairs and both sides of ties, non-empty
        and with every code fence closed."""
        if task not in self._fluent:
            self._fluent[task] = [
                s
                for s in self.by_task.get(task, ())
                if s.response.strip() and (s.side == "chosen" or s.pair.tie) and fences_balanced(s.response)
            ]
        return self._fluent[task]

    def entity_sources(self, task: str) -> dict[str, list[Source]]:
        """entity -> the task's responses that mention it (:func:`entities`)."""
        if task not in self._entities:
            index: dict[str, list[Source]] = defaultdict(list)
            for source in self.by_task.get(task, ()):
                for name in dict.fromkeys(span.text for span in entities(source.response)):
                    index[name].append(source)
            self._entities[task] = dict(index)
            self._by_words[task] = by_words(index)
        return self._entities[task]

    def entities_by_words(self, task: str) -> dict[int, list[str]]:
        self.entity_sources(task)
        return self._by_words[task]


def other_prompt(source: Source, rng: random.Random, pool: ResponsePool, sample: int = 8) -> Edited | None:
    """A fluent response (:meth:`ResponsePool.fluent`) to a different
    conversation of the same task: of ``sample`` drawn donors, the one closest
    in length to the response (so the contrast is not one of length). None
    when the task has no other conversation."""
    donors = [d for d in pool.fluent(source.pair.task) if d.conversation != source.conversation]
    if not donors:
        return None
    drawn = rng.sample(donors, min(sample, len(donors)))
    size = len(source.response)
    donor = min(drawn, key=lambda d: (abs(len(d.response) - size), d.pair.id, d.side))
    return Edited(donor.response, (donor.pair.id,))


def swap_fact(source: Source, rng: random.Random, pool: ResponsePool) -> Edited | None:
    """One named entity of the response replaced by an entity of as many
    words from a response of the same task to another conversation
    (:func:`~moerm.judges.contrast.fact_edits.swap_entity`)."""
    index = pool.entity_sources(source.pair.task)

    def elsewhere(name: str) -> Source | None:
        return next((s for s in index[name] if s.conversation != source.conversation), None)

    swapped = swap_entity(
        source.response,
        rng,
        pool.entities_by_words(source.pair.task),
        source.prompt,
        allowed=lambda name: elsewhere(name) is not None,
    )
    if swapped is None:
        return None
    edited, name = swapped
    donor = elsewhere(name) if name in index else None  # a month or weekday comes from no response
    return Edited(edited, (donor.pair.id,) if donor else ())
