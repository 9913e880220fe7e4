"""smoothguard_triton.threads: an mllm instance takes more threads only while its siblings
(other processes) are idle, and a killed sibling never leaves it thinking otherwise."""

from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from smoothguard_triton.threads import (
    PREFIX,
    FixedThreads,
    SiblingThreads,
    remove_stale,
    sibling_threads,
)

CONTEXT = multiprocessing.get_context("spawn")  # a fresh process, as a stub is


def _busy_sibling(directory: Path, started: Event, release: Event) -> None:
    sibling = SiblingThreads(directory, "mllm_0_1", 1, 2, lambda _: None)
    with sibling.batch(10):
        started.set()
        release.wait(60)
    sibling.close()


def _start_busy_sibling(directory: Path) -> tuple[multiprocessing.process.BaseProcess, Event]:
    started, release = CONTEXT.Event(), CONTEXT.Event()
    process = CONTEXT.Process(target=_busy_sibling, args=(directory, started, release))
    process.start()
    assert started.wait(60), "the sibling never got busy"
    return process, release


def test_alone_it_takes_threads_alone_and_beside_a_busy_sibling_threads(tmp_path: Path) -> None:
    calls: list[int] = []
    own = SiblingThreads(tmp_path, "mllm_0_0", 1, 2, calls.append)
    with own.batch(10) as threads:
        assert threads == 2
    with own.batch(10) as threads:  # no change: torch is not asked again
        assert threads == 2
    process, release = _start_busy_sibling(tmp_path)
    try:
        with own.batch(10) as threads:
            assert threads == 1
    finally:
        release.set()
        process.join(60)
    assert process.exitcode == 0
    with own.batch(10) as threads:  # the sibling finished its batch and closed
        assert threads == 2
    assert calls == [1, 2, 1, 2]
    own.close()
    assert not tmp_path.exists()  # the last instance out removes the folder


def test_a_sibling_killed_mid_batch_leaves_no_busy_mark(tmp_path: Path) -> None:
    own = SiblingThreads(tmp_path, "mllm_0_0", 1, 2, lambda _: None)
    process, _ = _start_busy_sibling(tmp_path)
    with own.batch(10) as threads:
        assert threads == 1
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)  # its file stays; the kernel drops its lock
    process.join(60)
    assert (tmp_path / "mllm_0_1.busy").exists()
    with own.batch(10) as threads:
        assert threads == 2
    own.close()


def test_two_starting_together_are_never_both_alone(tmp_path: Path) -> None:
    """Each takes its own lock before it looks: inside one batch, the other sees it busy."""
    first = SiblingThreads(tmp_path, "mllm_0_0", 1, 2, lambda _: None)
    second = SiblingThreads(tmp_path, "mllm_0_1", 1, 2, lambda _: None)
    with first.batch(10) as a, second.batch(10) as b:
        assert (a, b) == (2, 1)
    first.close()
    second.close()


def test_folders_of_servers_that_are_gone_are_removed(tmp_path: Path) -> None:
    gone = CONTEXT.Process(target=int)
    gone.start()
    gone.join(60)
    stale = tmp_path / f"{PREFIX}{gone.pid}-mllm"
    live = tmp_path / f"{PREFIX}{os.getpid()}-mllm"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "mllm_0_0.busy").touch()
    remove_stale(tmp_path)
    assert not stale.exists() and (live / "mllm_0_0.busy").exists()


def test_a_batch_under_min_rows_keeps_threads(tmp_path: Path) -> None:
    own = SiblingThreads(tmp_path, "mllm_0_0", 1, 2, lambda _: None, min_rows=8)
    with own.batch(4) as few, own.batch(8) as enough:
        assert (few, enough) == (1, 2)
    own.close()


def test_a_folder_another_user_made_is_not_used(tmp_path: Path) -> None:
    """The folder sits in a shared temp directory under a name others can guess."""
    if os.getuid() != 0:
        pytest.skip("handing a folder to another user needs root")
    folder = tmp_path / f"{PREFIX}1-mllm"
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    with pytest.raises(PermissionError, match="another user"):
        SiblingThreads(folder, "mllm_0_0", 1, 2, lambda _: None)


@pytest.mark.parametrize(("threads", "threads_alone"), [(1, 0), (1, 1), (2, 2), (0, 2)])
def test_without_more_threads_to_take_an_instance_keeps_its_own(
    threads: int, threads_alone: int
) -> None:
    fixed = sibling_threads("mllm", "mllm_0_0", threads, threads_alone)
    assert isinstance(fixed, FixedThreads)
    with fixed.batch(10) as taken:
        assert taken == threads
    fixed.close()
