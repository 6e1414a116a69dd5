"""Decode and resize frames ahead of the consumer in a background thread.

JPEG decoding and resizing release the GIL (libjpeg-turbo in PIL, OpenCV), so a single worker
thread overlaps them with the consumer's GPU work. The queue is bounded, so at most ``depth``
frames are held in memory. Errors in the worker are re-raised in the consumer with their own
type (e.g. :class:`~vidprop.errors.SourceError` for a truncated JPEG), and the worker stops
as soon as the consumer stops iterating (``break``, an exception, or ``close()``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from typing import Iterable, Iterator

import torch

from vidprop.io.frames import Frame
from vidprop.io.resize import ResizePolicy

__all__ = ["prefetch"]

logger = logging.getLogger(__name__)

_POLL_S = 0.1  # how often a blocked worker checks whether the consumer has stopped


class _Done:
    """End-of-stream marker put on the queue by the worker."""


class _Failed:
    """Carries the worker's exception to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


def _prepare(frames: Iterable[Frame], policy: ResizePolicy | None) -> Iterator[tuple[Frame, torch.Tensor | None]]:
    iterator = iter(frames)
    try:
        for frame in iterator:
            yield frame, (policy(frame.image) if policy is not None else None)
    finally:
        # Close the source's generator now (releasing e.g. a video reader), not at garbage collection.
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _worker(source: Iterable[Frame], policy: ResizePolicy | None, out: queue.Queue, stop: threading.Event) -> None:
    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    try:
        with contextlib.closing(_prepare(source, policy)) as items:
            for item in items:
                if not put(item):
                    return
        put(_Done())
    except BaseException as exc:  # noqa: BLE001 - everything must reach the consumer
        put(_Failed(exc))


def prefetch(
    source: Iterable[Frame], policy: ResizePolicy | None = None, depth: int = 8
) -> Iterator[tuple[Frame, torch.Tensor | None]]:
    """Iterate over ``source`` with decoding (and resizing) running ahead in a background thread.

    Args:
        source: a :class:`~vidprop.io.frames.FrameSource` (or any iterable of frames).
        policy: applied to each frame's image in the worker; None yields ``None`` tensors.
        depth: at most this many prepared frames wait in the queue; 0 runs everything in the
            caller's thread (no background thread).

    Yields:
        ``(frame, tensor)`` in source order; ``tensor`` is ``policy(frame.image)``, a
        (3, h, w) float32 tensor in [-1, 1], or None without a policy.

    Raises:
        Whatever the source or the policy raised in the worker, re-raised here.
    """
    if depth < 0:
        raise ValueError(f"prefetch depth must be >= 0, got {depth}")
    if depth == 0:
        yield from _prepare(source, policy)
        return
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(
        target=_worker, args=(source, policy, out, stop), name=f"vidprop-prefetch:{getattr(source, 'path', '?')}", daemon=True
    )
    thread.start()
    try:
        while True:
            item = out.get()
            if isinstance(item, _Done):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        # Unblock a worker waiting on a full queue, then wait for it to close its source.
        with contextlib.suppress(queue.Empty):
            while True:
                out.get_nowait()
        thread.join()
        logger.debug("prefetch thread for %s stopped", getattr(source, "path", source))
