"""One job at a time on a Session: the lock every job, model load and probe scope holds.

A job changes the model for its duration (LoRA weights merged, circular padding for tiling, attention processors
and forward hooks of probes), so two jobs on one Session must never overlap. The rule:

- a job started from **another thread** while one runs *waits* for it (with one warning that says so): the panel's
  worker thread and a notebook cell take turns;
- a job started from **the same thread** while one is still open (a paused ``session.steps()`` run or debugger)
  is *refused* with an error that says how to finish or close the open one: waiting would never end;
- probes and attention maps (``with session.probe(...)``) hold the session for their ``with`` block, so other
  threads' jobs wait until it ends, while jobs of the block's own thread run inside it.

A held job (:class:`HeldJob`) releases the lock when it finishes, fails, is closed, or is garbage collected,
and the job's own ``finally`` blocks (which undo its module changes) run before the next job starts.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Generator


class SessionBusyError(RuntimeError):
    """A job was started in the thread whose earlier job is still open (paused)."""


class JobLock:
    """Exclusive for jobs, re-entrant for the owning thread's scopes (probes): see the module docstring."""

    def __init__(self):
        self._cond = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._what: str | None = None
        self._open_job: str | None = None

    @property
    def busy(self) -> str | None:
        """What holds the session now (None when idle)."""
        return self._open_job or self._what

    def acquire(self, what: str, *, job: bool = True, exclusive: bool = True) -> Callable[[], None]:
        """Take the session for ``what``; returns the function that gives it back (safe to call more than once).

        ``job``: ``what`` is a job (it stays open until released). ``exclusive``: refuse while a job of this
        thread is open (jobs and model loads); a probe scope is not exclusive.
        """
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                if exclusive and self._open_job is not None:
                    raise SessionBusyError(
                        f"This session is still running {self._open_job} in this thread (a paused session.steps() "
                        "run or debugger): finish it (run.finish(), dbg.finish()) or close it (run.close(), "
                        f"dbg.close()) before starting {what}. Jobs on one Session never overlap.")
            else:
                if self._owner is not None:
                    warnings.warn(f"Waiting for {self.busy} to finish before starting {what} (jobs on one Session "
                                  "run one at a time).", stacklevel=3)
                    self._cond.wait_for(lambda: self._owner is None)
                self._owner, self._what = me, what
            self._depth += 1
            if job:
                self._open_job = what
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            with self._cond:
                if job:
                    self._open_job = None
                self._depth -= 1
                if self._depth == 0:
                    self._owner, self._what = None, None
                    self._cond.notify_all()

        return release


class HeldJob:
    """A job generator that holds the session until it ends: finished, failed, closed or garbage collected.

    Drive it like the generator it wraps (``next``, ``send``, ``close``; ``yield from`` works); the wrapped
    generator is closed (so its ``finally`` blocks undo its module changes) *before* the lock is released.
    """

    def __init__(self, gen: Generator, release: Callable[[], None]):
        self._gen = gen
        self._release: Callable[[], None] | None = release

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)

    def send(self, value):
        try:
            return self._gen.send(value)
        except BaseException:
            self.close()
            raise

    def throw(self, *args):
        try:
            return self._gen.throw(*args)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self._gen.close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()

    def __del__(self):
        self.close()


__all__ = ["HeldJob", "JobLock", "SessionBusyError"]
