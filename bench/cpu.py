"""The CPU a step's processes spent: the system under test's, and the load generators'."""
from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from typing import Callable, Iterable

import psutil

# Between the CPU samples inside a measured window: a process that ends in it keeps what it
# had spent at the last one (Ray starts and reaps workers while a step runs).
CPU_SAMPLE_S = 1.0


class ProcessCpu:
    """CPU seconds (user + system) that a set of processes spent over a step's measured
    window, sampled by a thread at the window's start, every CPU_SAMPLE_S and at its end.
    A process is told by its pid and start time (pids are reused): one seen at the start
    counts what it spent since, one that started later all it spent; one that ended inside
    the window counts what it had spent at the last sample that saw it, and then the figure
    is a lower bound (`partial`). `processes()` names the set each time."""

    def __init__(self, processes: Callable[[], Iterable[psutil.Process]], start: float,
                 end: float):
        self.processes = processes
        self._baseline: dict[tuple[int, float], float] = {}  # CPU s before the window
        self._latest: dict[tuple[int, float], tuple[str, float]] = {}  # (name, CPU s)
        self._alive: set[tuple[int, float]] = set()  # seen by the last sample
        self._thread = threading.Thread(target=self._sample, args=(start, end), daemon=True)
        self._thread.start()

    def _sample(self, start: float, end: float) -> None:
        when, first = start, True
        while True:
            time.sleep(max(0.0, when - time.time()))
            seen = self._cpu_s()
            for key, (_, spent) in seen.items():
                # a process the first sample missed started inside the window
                self._baseline.setdefault(key, spent if first else 0.0)
            first = False
            self._latest.update(seen)
            self._alive = set(seen)
            if when >= end:
                return
            when = min(when + CPU_SAMPLE_S, end)

    def _cpu_s(self) -> dict[tuple[int, float], tuple[str, float]]:
        """By (pid, start time): the process's name and its CPU seconds so far."""
        seen = {}
        for proc in self.processes():
            with contextlib.suppress(psutil.Error), proc.oneshot():
                times = proc.cpu_times()
                seen[proc.pid, proc.create_time()] = (_process_name(proc.name()),
                                                      times.user + times.system)
        return seen

    def _spent(self) -> Counter:
        """CPU seconds in the window by name (each process's latest)."""
        self._thread.join()
        spent: Counter = Counter()
        for key, (name, cpu_s) in self._latest.items():
            spent[name] += cpu_s - self._baseline[key]
        return spent

    @property
    def partial(self) -> bool:
        """A process ended inside the window: what it spent after its last sample is lost."""
        self._thread.join()
        return bool(self._latest.keys() - self._alive)

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


def _process_name(title: str) -> str:
    """A Ray actor's process title names the method it is running (ray::ShardActor.stats):
    the actor's class alone, so that a process keeps one name whatever it was doing."""
    return title.split(".", 1)[0] if title.startswith("ray::") else title


def server_cpu(generators: set[int], start: float, end: float) -> ProcessCpu:
    """The system under test: every process this bench started, directly or not (servers,
    redis-server, Ray's daemons and actors), but the load generators. Only one system runs
    at a time, so that is the system's own processes, the server side only."""
    return ProcessCpu(lambda: [p for p in psutil.Process().children(recursive=True)
                               if p.pid not in generators], start, end)


def generator_cpu(generators: set[int], start: float, end: float) -> ProcessCpu:
    """The load generators themselves: what the bench costs the machine it shares."""
    return ProcessCpu(lambda: [psutil.Process(pid) for pid in generators
                               if psutil.pid_exists(pid)], start, end)
