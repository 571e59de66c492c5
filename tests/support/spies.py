"""A recording stand-in for an object (a diskcache.Cache): proves a path never touches it."""

from __future__ import annotations


class Spy:
    """Forwards every use to ``target`` and records its name in ``used``."""

    def __init__(self, target) -> None:
        self._target, self.used = target, []

    @property
    def target(self):
        return self._target

    def __getattr__(self, name):
        self.used.append(name)
        return getattr(self._target, name)

    def __contains__(self, key) -> bool:
        self.used.append("__contains__")
        return key in self._target

    def __iter__(self):
        self.used.append("__iter__")
        return iter(self._target)
