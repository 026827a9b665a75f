"""Which topics to record: an explicit list, regex include/exclude, or everything (like ``ros2 bag record``)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from ros_nodes.core.errors import RecorderError


class TopicSelection:
    """Decides per topic name, once, whether it is recorded.

    Semantics follow ``ros2 bag record``: explicit topics and ``include``
    matches are recorded; with neither, every topic is (``-a``); ``exclude``
    always wins. Decisions are cached because the receive path asks for every
    message.
    """

    def __init__(self, topics: Iterable[str] = (), include: str = "", exclude: str = "") -> None:
        self.topics = frozenset(topics)
        self.include = _compile(include, "include")
        self.exclude = _compile(exclude, "exclude")
        self._cache: dict[str, bool] = {}

    @property
    def records_all(self) -> bool:
        return not self.topics and self.include is None

    def accepts(self, topic: str) -> bool:
        decision = self._cache.get(topic)
        if decision is None:
            decision = self._decide(topic)
            self._cache[topic] = decision
        return decision

    def _decide(self, topic: str) -> bool:
        if self.exclude is not None and self.exclude.search(topic):
            return False
        if self.records_all:
            return True
        return topic in self.topics or (self.include is not None and self.include.search(topic) is not None)


def _compile(pattern: str, what: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        msg = f"invalid {what} regex {pattern!r}: {err}"
        raise RecorderError(msg) from err
