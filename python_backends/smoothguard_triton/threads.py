"""More torch threads for a model instance while its sibling instances are idle.

Two single-threaded `mllm` instances serve more under load than one with two threads (the
per-call Python overhead runs in parallel), but at low load one instance works alone and the
other core idles: a defended request's rows then take 1.6x as long as in process. Each
instance holds an exclusive `flock` on a file of its own while it runs a batch, and before
one it tries a shared lock on its siblings' files: if none is held, it is alone and takes
`threads_alone` threads, otherwise `threads`. The kernel drops a dead process's locks, so a
killed instance never leaves a sibling thinking it is busy.

An instance takes its own lock before it looks at its siblings, so of two starting together at
most one sees itself alone; one that started alone keeps its threads until its batch ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger("smoothguard")
PREFIX = "smoothguard-threads-"  # then the server's pid and the model's name


class SiblingThreads:
    """Chooses an instance's thread count per batch by whether its siblings are busy."""

    def __init__(
        self,
        directory: Path,
        instance: str,
        threads: int,
        threads_alone: int,
        set_threads: Callable[[int], None],
        min_rows: int = 1,
    ) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_uid != os.getuid():  # another user made it first: not ours
            raise PermissionError(f"{directory} belongs to another user")
        self.directory = directory
        self.threads, self.threads_alone, self.min_rows = threads, threads_alone, min_rows
        self._set_threads = set_threads
        self._path = directory / f"{instance}.busy"
        self._own: IO[bytes] = open(self._path, "a+b")  # noqa: SIM115 - held for the lifetime
        self._current = threads
        set_threads(threads)

    @contextlib.contextmanager
    def batch(self, rows: int) -> Iterator[int]:
        """Busy for the block; yields the threads it runs `rows` with (`threads_alone` only
        from `min_rows` on: a short batch that starts alone shares the cores with its
        sibling's next one until it ends, which cost the bare model's throughput under load)."""
        fcntl.flock(self._own, fcntl.LOCK_EX)
        try:
            alone = rows >= self.min_rows and not self._any_sibling_busy()
            wanted = self.threads_alone if alone else self.threads
            if wanted != self._current:
                self._set_threads(wanted)
                self._current = wanted
            yield wanted
        finally:
            fcntl.flock(self._own, fcntl.LOCK_UN)

    def _any_sibling_busy(self) -> bool:
        # Opened each time, not kept: a restarted sibling makes a new file under the same name.
        for path in self.directory.glob("*.busy"):
            if path == self._path:
                continue
            try:
                handle = open(path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:  # a sibling that finalised meanwhile
                continue
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
        return False

    def close(self) -> None:
        self._own.close()
        self._path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the last instance out removes the folder
            self.directory.rmdir()


class FixedThreads:
    """An instance that keeps its threads: the same interface, nothing to lock."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    @contextlib.contextmanager
    def batch(self, rows: int) -> Iterator[int]:
        yield self.threads

    def close(self) -> None:
        pass


def sibling_threads(
    model_name: str, instance: str, threads: int, threads_alone: int, min_rows: int = 1
) -> SiblingThreads | FixedThreads:
    """For a model.py: siblings are the instances of `model_name` in this tritonserver (the
    stub's parent process). FixedThreads when `threads_alone` adds nothing or no lock file
    can be made (the instance then keeps `threads`)."""
    if threads < 1 or threads_alone <= threads:
        return FixedThreads(threads)
    import torch

    root = Path(tempfile.gettempdir())
    remove_stale(root)
    directory = root / f"{PREFIX}{os.getppid()}-{model_name}"
    try:
        return SiblingThreads(
            directory, instance, threads, threads_alone, torch.set_num_threads, min_rows
        )
    except OSError as exc:
        log.warning("threads_alone is off for %s: %s", instance, exc)
        return FixedThreads(threads)


def remove_stale(root: Path) -> None:
    """Folders of servers that are gone (Triton may kill stubs at exit before they finalise)."""
    for folder in root.glob(f"{PREFIX}*"):
        pid = folder.name.removeprefix(PREFIX).split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)) or folder.stat().st_uid != os.getuid():
            continue
        for path in folder.glob("*.busy"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True
