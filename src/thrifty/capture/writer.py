"""The capture file's writer: lines are appended by a daemon thread, never on the event loop.

Requests hand over what they captured (``put``) and return; the thread redacts it, encodes it and
appends each batch with ``os.write`` on an ``O_APPEND`` descriptor. A line is whole or absent:
a process killed mid-write can leave only the tail of the last line, and the next writer opened
on the file cuts that tail off before it appends (``_cut_partial_tail``), so ``load_prompts``
never meets half a line. The writer holds the file locked (``flock``) while open: one gateway
process per file, so its line count and that cut are its own. Like the ledger writer, an ``atexit`` hook writes what is still queued.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from thrifty.errors import ConfigError

try:  # POSIX; without it (Windows) two gateways on one file are not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("thrifty.capture")

# How long the thread gathers lines before one write: a busy gateway appends in batches.
_GATHER_S = 0.05
# How much of the file is read at a time when it is opened (counting its lines).
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Captured:
    """One request as captured (not yet redacted: that is done off the loop, in the thread)."""

    request_id: str
    task: str | None
    messages: list[dict[str, Any]]
    model: str | None  # the served model; None: the line carries no reference
    answer: str | None
    cost_usd: float | None


def scrub(value: Any, redactor: Callable[[str], str]) -> Any:
    """``value`` with every string in it passed through ``redactor`` (keys of objects kept)."""
    if isinstance(value, str):
        return redactor(value)
    if isinstance(value, list):
        return [scrub(v, redactor) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v, redactor) for k, v in value.items()}
    return value


def encode(item: Captured, redactor: Callable[[str], str]) -> bytes:
    """The prompts-file line of ``item`` (evaluation/collect.py ``load_prompts``), redacted."""
    line: dict[str, Any] = {"id": item.request_id}
    if item.task:
        line["task"] = item.task
    line["messages"] = scrub(item.messages, redactor)
    if item.model is not None and item.answer is not None:
        line["reference"] = {"model": item.model, "answer": redactor(item.answer), "cost_usd": item.cost_usd}
    # ensure_ascii: the file's only line breaks are the ones between lines (a U+2028 in a prompt
    # written raw splits the line for readers that use str.splitlines).
    return (json.dumps(line, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def _cut_partial_tail(fd: int, path: str) -> int:
    """Cut an unfinished last line (a killed writer's) off the file; return the lines it holds.
    Read in blocks: the file may hold thousands of long prompts, and this runs at every start."""
    lines = 0
    last_newline = -1  # the offset of the file's last b"\n"
    offset = 0
    while block := os.pread(fd, _BLOCK, offset):
        lines += block.count(b"\n")
        at = block.rfind(b"\n")
        if at >= 0:
            last_newline = offset + at
        offset += len(block)
    if offset and last_newline != offset - 1:
        if _whole_line(os.pread(fd, offset - last_newline - 1, last_newline + 1)):
            # A prompts file edited by hand, its last line left without a newline: ended, kept.
            os.write(fd, b"\n")  # O_APPEND: at the end
            return lines + 1
        log.warning("%s: its last line was cut short (an interrupted write): removed", path)
        os.ftruncate(fd, last_newline + 1)
    return lines


def _whole_line(tail: bytes) -> bool:
    """Whether ``tail`` (what follows the file's last newline) is a whole JSON object: an
    interrupted write's half line never is (the writer's lines end with their newline)."""
    try:
        return isinstance(json.loads(tail), dict)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        return False


def _lock(fd: int, path: str) -> None:
    """Hold the file for this process: a second gateway on it would count ``max_prompts`` on its
    own and could cut the line this one is writing as its last (``_cut_partial_tail``)."""
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"capture.path: {path} is in use by another process (one capture file per "
                          "gateway process: e.g. ${HOSTNAME} in the path)") from None


class CaptureWriter:
    """Appends captured requests to ``path`` from a thread of its own."""

    def __init__(self, path: str, redactor: Callable[[str], str]) -> None:
        self.path = path
        self.redactor = redactor
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        # Owner-only when created: the file holds prompts and answers in plain text.
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            _lock(self._fd, path)
            self.lines = _cut_partial_tail(self._fd, path)  # already in the file (max_prompts counts them)
        except BaseException:
            os.close(self._fd)
            raise
        self._queue: queue.Queue[Captured | threading.Event | None] = queue.Queue()
        self._failed = False  # a write failed: said once, not per batch
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="thrifty-capture", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def put(self, item: Captured) -> None:
        if not self._closed:
            self._queue.put(item)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything put so far is in the file."""
        if self._closed:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, stop the thread, close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._queue.put(None)
        self._thread.join(timeout=30.0)
        if not self._thread.is_alive():  # a write stuck on a dead disk keeps its descriptor
            os.close(self._fd)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if isinstance(first, Captured):
                time.sleep(_GATHER_S)  # gather a batch by sleeping (a queue wait would wake per line)
            batch: list[bytes] = []
            waiters: list[threading.Event] = []
            item: Captured | threading.Event | None = first
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    try:
                        batch.append(encode(item, self.redactor))
                    except Exception:  # one odd request never stops the others' lines
                        log.exception("capture: request %s could not be encoded", item.request_id)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._write(b"".join(batch))
            for w in waiters:
                w.set()

    def _write(self, data: bytes) -> None:
        size: int | None = None
        try:
            size = os.fstat(self._fd).st_size  # still the end at a failure: no other process writes (locked)
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            if size is not None:  # a batch half written (a full disk): its lines go, whole
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, size)
            if not self._failed:
                self._failed = True
                log.warning("capture: cannot write %s (%s): captured prompts are dropped", self.path,
                            exc.strerror or exc)
