"""Output files written on a background thread, in order, while the next frames are computed.

Encoding a PNG and waiting for ``fsync`` take milliseconds per frame on the CPU, during which a
GPU would have nothing queued. :class:`BackgroundWriter` runs the writes on one thread behind a
bounded queue (``runtime.write_queue``), so the main thread goes on to the next frame:

- writes run one at a time in submission order (an overlay video gets its frames in order);
- at most ``depth`` writes wait; :meth:`~BackgroundWriter.submit` blocks while the queue is full,
  so memory stays bounded when the disk is slower than the computation;
- the first failing write stops the writer: the writes queued after it are dropped, and the error
  is raised in the main thread by the next :meth:`~BackgroundWriter.submit` or by
  :meth:`~BackgroundWriter.close`, naming the file (an :class:`~vidprop.errors.OutputError` for an
  OS error; a :class:`~vidprop.errors.VidpropError` as raised);
- :meth:`~BackgroundWriter.close` returns once every write has finished, so what is written after
  it (a completion marker) comes after every file is durable (each write fsyncs its file, see
  :mod:`vidprop.io.atomic`, which also removes a failed write's temporary file).

``depth=0`` runs each write at once on the calling thread, with the same errors.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable

from vidprop.errors import OutputError, VidpropError

__all__ = ["BackgroundWriter"]

_POLL_S = 0.1  # how often a blocked submit checks whether the writer has failed


class _Stop:
    """End-of-work marker."""


def _run(path: os.PathLike | str, write: Callable[[], Any]) -> None:
    """Run one write; an OS error becomes an OutputError naming ``path``."""
    try:
        write()
    except VidpropError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write this file ({exc.strerror or exc})", path) from exc


class BackgroundWriter:
    """Runs write jobs on one thread, in order, behind a queue of ``depth`` jobs.

    Args:
        depth: writes that may wait (>= 1), or 0 to write on the calling thread.
        name: the thread's name.

    Use it as a context manager, or call :meth:`close` (success) or :meth:`abort` (failure):

        >>> with BackgroundWriter(8) as writer:
        ...     for path, ids in masks:
        ...         writer.submit(path, functools.partial(write_mask, path, ids))
    """

    def __init__(self, depth: int, name: str = "vidprop-writer"):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
        self.depth = depth
        self._error: BaseException | None = None
        self._closed = False
        self._thread = None
        if depth:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._failed = threading.Event()
            self._thread = threading.Thread(target=self._work, name=name, daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _Stop:
                return
            if self._failed.is_set():
                continue  # drop what was queued after a failure (or an abort)
            path, write = item
            try:
                _run(path, write)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._error = exc
                self._failed.set()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, path: os.PathLike | str, write: Callable[[], Any]) -> None:
        """Queue ``write()`` (which writes ``path``); blocks while ``depth`` writes wait.

        Raises:
            OutputError, VidpropError: an earlier write failed (naming its file), or, with
                ``depth=0``, this one.
            RuntimeError: the writer is closed.
        """
        if self._closed:
            raise RuntimeError("BackgroundWriter: submit after close")
        if self._thread is None:
            _run(path, write)
            return
        while True:
            if self._failed.is_set():
                self._stop(drain=False)
                self._raise_error()
            try:
                self._queue.put((path, write), timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait until every queued write has finished; raise the first failure (naming its file)."""
        if self._closed:
            return
        self._stop(drain=True)
        self._raise_error()

    def abort(self) -> None:
        """Drop the writes not yet started, wait for the one running, and forget any failure."""
        if self._closed:
            return
        self._stop(drain=False)
        self._error = None

    def _stop(self, drain: bool) -> None:
        self._closed = True
        if self._thread is None:
            return
        if not drain:
            self._failed.set()  # the worker skips whatever is still queued
        while self._thread.is_alive():
            try:
                self._queue.put(_Stop, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        self._thread.join()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
