"""The CPU a step's processes spent: the system under test's, and the load generators'."""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections import Counter
from typing import Callable, Iterable

import psutil

# Between the CPU samples inside a measured window: a process that ends in it keeps what it
# had spent at the last one (Ray starts and reaps workers while a step runs).
CPU_SAMPLE_S = 1.0

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")  # what a process's start time counts in
Key = tuple[int, float]  # a process: its pid and start time (pids are reused)


class ProcessCpu:
    """CPU seconds (user + system) that a set of processes spent in consecutive windows of
    `seconds` from `start` (epoch): `windows` of them, or, if None, until `last()` names
    the last. A thread samples every process at each window's edges and every CPU_SAMPLE_S
    between; a window's closing sample is the next one's opening, so steps that follow each
    other lose nothing between them. `processes()` names the set each time."""

    def __init__(self, processes: Callable[[], Iterable[psutil.Process]], start: float,
                 seconds: float, windows: int | None = 1):
        self.processes = processes
        self.start, self.seconds = start, seconds
        self._last = math.inf if windows is None else windows - 1
        self._windows: list[CpuWindow] = []
        self._closed = threading.Condition()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def last(self, index: int) -> None:
        """Window `index` is the last (it has not closed yet)."""
        self._last = index

    def window(self, index: int = 0) -> CpuWindow:
        """Window `index`, once it has closed."""
        with self._closed:
            self._closed.wait_for(lambda: len(self._windows) > index)
            return self._windows[index]

    def _sample(self) -> None:
        time.sleep(max(0.0, self.start - time.time()))
        seen = self._cpu_s()
        index = 0
        while True:
            window = CpuWindow(self.start + index * self.seconds, seen)
            end = window.start + self.seconds
            when = window.start
            while when < end:
                when = min(when + CPU_SAMPLE_S, end)
                time.sleep(max(0.0, when - time.time()))
                seen = self._cpu_s()
                window.add(seen)
            with self._closed:
                self._windows.append(window)
                self._closed.notify_all()
            if index >= self._last:
                return
            index += 1

    def _cpu_s(self) -> dict[Key, tuple[str, float]]:
        """By process: its name and its CPU seconds so far."""
        seen = {}
        for proc in self.processes():
            with contextlib.suppress(psutil.Error), proc.oneshot():
                times = proc.cpu_times()
                seen[proc.pid, proc.create_time()] = (_process_name(proc.name()),
                                                      times.user + times.system)
        return seen


class CpuWindow:
    """What the processes spent in one window of a ProcessCpu. A process alive at its start
    counts what it spent since, one started inside it all it spent; one that ended inside it
    counts what it had spent at the last sample that saw it, one that began before it but was
    first seen inside it what it spent from then, and either makes the figure a lower bound
    (`partial`)."""

    def __init__(self, start: float, opening: dict[Key, tuple[str, float]]):
        self.start = start
        self._born_from = _on_create_time_clock(start)
        self._baseline = {key: spent for key, (_, spent) in opening.items()}  # CPU s before
        self._latest = dict(opening)  # (name, CPU s) at the last sample that saw it
        self._alive = set(opening)  # seen by the last sample
        self._missed = False  # a process alive at the start was not seen then

    def add(self, seen: dict[Key, tuple[str, float]]) -> None:
        for key, (_, spent) in seen.items():
            if key not in self._baseline:
                born_inside = key[1] >= self._born_from
                self._baseline[key] = 0.0 if born_inside else spent
                self._missed |= not born_inside
        self._latest.update(seen)
        self._alive = set(seen)

    def _spent(self) -> Counter:
        """CPU seconds in the window by name (each process's latest)."""
        spent: Counter = Counter()
        for key, (name, cpu_s) in self._latest.items():
            spent[name] += cpu_s - self._baseline[key]
        return spent

    @property
    def partial(self) -> bool:
        """What some process spent in the window went unseen: it ended after its last sample,
        or it was first seen after the window began."""
        return self._missed or bool(self._latest.keys() - self._alive)

    def per_request(self, answered: int) -> tuple[float, float | None]:
        """(CPU seconds in the window, µs of it per request answered)."""
        spent = max(sum(self._spent().values()), 0.0)
        return round(spent, 3), round(spent / answered * 1e6, 1) if answered else None

    def by_process(self, answered: int, scale: float = 1e6) -> dict[str, float]:
        """CPU seconds × `scale` per request answered (µs by default), by process name, the
        costliest first."""
        if not answered:
            return {}
        spent = self._spent()
        return {name: round(s / answered * scale, 1)
                for name, s in sorted(spent.items(), key=lambda x: -x[1]) if s > 0}


def _on_create_time_clock(epoch: float) -> float:
    """`epoch` as psutil's create_time reads it: the boot time /proc/stat gives (whole
    seconds, so up to one off the wall clock) plus the clock ticks from boot to the start,
    whole ticks (a process started in the tick `epoch` falls in reads as started at it)."""
    since_boot = epoch - time.time() + time.clock_gettime(time.CLOCK_BOOTTIME)
    return psutil.boot_time() + since_boot - TICK_S


def _process_name(title: str) -> str:
    """A Ray actor's process title names the method it is running (ray::ShardActor.stats):
    the actor's class alone, so that a process keeps one name whatever it was doing."""
    return title.split(".", 1)[0] if title.startswith("ray::") else title


def server_cpu(generators: set[int], start: float, seconds: float,
               windows: int | None = 1) -> ProcessCpu:
    """The system under test: every process this bench started, directly or not (servers,
    redis-server, Ray's daemons and actors), but the load generators. Only one system runs
    at a time, so that is the system's own processes, the server side only."""
    return ProcessCpu(lambda: [p for p in psutil.Process().children(recursive=True)
                               if p.pid not in generators], start, seconds, windows)


def generator_cpu(generators: set[int], start: float, seconds: float,
                  windows: int | None = 1) -> ProcessCpu:
    """The load generators themselves: what the bench costs the machine it shares."""
    return ProcessCpu(lambda: [psutil.Process(pid) for pid in generators
                               if psutil.pid_exists(pid)], start, seconds, windows)
