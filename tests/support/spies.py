"""Recorders that prove a path never touches something: a stand-in for an object (a
diskcache.Cache), every SQLite statement, every thread-pool submission."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor


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


class Recorder:
    """What was seen, in order, while ``on`` (from the start)."""

    def __init__(self) -> None:
        self.on, self.seen = True, []

    def record(self, item) -> None:
        if self.on:
            self.seen.append(item)


def trace_sqlite(monkeypatch) -> Recorder:
    """Every statement run on any SQLite connection opened from now on, by any code and in
    any thread (diskcache opens one connection per thread): ``(database, statement)``."""
    recorder, real = Recorder(), sqlite3.connect

    def connect(database, *args, **kwargs):
        con = real(database, *args, **kwargs)
        con.set_trace_callback(lambda sql, db=str(database): recorder.record((db, sql)))
        return con
    monkeypatch.setattr(sqlite3, "connect", connect)
    return recorder


def count_submissions(monkeypatch) -> Recorder:
    """Every job handed to any thread pool: the loop's default executor (``to_thread``,
    ``run_in_executor(None, …)``) and any other ``ThreadPoolExecutor``."""
    recorder, real = Recorder(), ThreadPoolExecutor.submit

    def submit(executor, fn, /, *args, **kwargs):
        recorder.record(repr(fn)[:200])
        return real(executor, fn, *args, **kwargs)
    monkeypatch.setattr(ThreadPoolExecutor, "submit", submit)
    return recorder
