"""hemoprofile.io.blocks.ordered_map: results in block order, a bounded window, errors at their turn."""

import os
import threading
import time

import pytest

from hemoprofile.io import ordered_map, resolve_threads


def test_results_come_in_item_order_even_when_later_blocks_finish_first():
    def slow_first(i):
        time.sleep(0.02 if i % 3 == 0 else 0.0)
        return i * i
    assert list(ordered_map(slow_first, range(20), threads=3)) == [i * i for i in range(20)]
    assert list(ordered_map(slow_first, range(20), threads=1)) == [i * i for i in range(20)]


def test_at_most_two_blocks_per_thread_are_in_flight():
    lock, state = threading.Lock(), {"taken": 0, "yielded": 0, "max": 0}

    def items():
        for i in range(40):
            with lock:
                state["taken"] += 1
                state["max"] = max(state["max"], state["taken"] - state["yielded"])
            yield i

    for _ in ordered_map(lambda i: time.sleep(0.001) or i, items(), threads=2):
        with lock:
            state["yielded"] += 1
    assert state["taken"] == 40 and state["max"] <= 4


def test_several_threads_really_run_at_once():
    seen, barrier = set(), threading.Barrier(2, timeout=5)

    def block(i):
        barrier.wait()  # deadlocks (BrokenBarrierError after 5 s) unless two blocks run together
        seen.add(threading.get_ident())
        return i
    assert list(ordered_map(block, range(4), threads=2)) == [0, 1, 2, 3]
    assert len(seen) == 2


def test_an_error_is_raised_at_its_block_and_later_blocks_are_cancelled():
    started = []

    def block(i):
        started.append(i)
        if i == 3:
            raise ValueError("block 3 is bad")
        time.sleep(0.01)
        return i
    out = []
    with pytest.raises(ValueError, match="block 3 is bad"):
        out.extend(ordered_map(block, range(100), threads=2))
    assert out == [0, 1, 2] and max(started) < 10


def test_resolve_threads():
    assert resolve_threads(None) == 1 and resolve_threads(0) == 1 and resolve_threads(4) == 4
    with pytest.raises(ValueError, match="threads must be"):
        resolve_threads(-2)


def _pid_and_square(i):
    return os.getpid(), i * i


def test_processes_run_blocks_in_forked_workers_in_order():
    out = list(ordered_map(_pid_and_square, range(6), threads=2, processes=True))
    assert [square for _, square in out] == [i * i for i in range(6)]
    assert os.getpid() not in {pid for pid, _ in out}  # the blocks ran in worker processes
    assert list(ordered_map(_pid_and_square, range(3), threads=1, processes=True)) == [(os.getpid(), i * i)
                                                                                       for i in range(3)]


def test_processes_take_a_closure_without_pickling_it(tmp_path):
    # a lambda over a local object cannot be pickled: the workers inherit it through the fork instead
    offset = {"value": 10}
    unpicklable = lambda i: (os.getpid(), i + offset["value"])  # noqa: E731
    out = list(ordered_map(unpicklable, range(5), threads=2, processes=True))
    assert [value for _, value in out] == [10, 11, 12, 13, 14]
    assert os.getpid() not in {pid for pid, _ in out}
    # files a worker writes are kept; the parked function is gone once the map ends
    list(ordered_map(lambda i: (tmp_path / f"{i}.txt").write_text(str(i)), range(3), threads=2, processes=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.txt", "1.txt", "2.txt"]
    from hemoprofile.io import blocks
    assert blocks._PARKED == {}


def test_processes_raise_a_worker_error_at_its_turn():
    def fail_on_three(i):
        if i == 3:
            raise ValueError("block 3 is bad")
        return i

    seen = []
    with pytest.raises(ValueError, match="block 3 is bad"):
        for value in ordered_map(fail_on_three, range(8), threads=2, processes=True):
            seen.append(value)
    assert seen == [0, 1, 2]
