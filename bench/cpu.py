"""The CPU a step's processes spent: the system under test's, and the load generators'."""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections import Counter
from typing import Callable, Iterable, NamedTuple, TypeVar

import psutil

# Between the CPU samples inside a measured window: a process that ends in it keeps what it
# had spent at the last one (Ray starts and reaps workers while a step runs).
CPU_SAMPLE_S = 1.0

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")  # what a process's start time counts in
Key = tuple[int, float]  # a process: its pid and start time (pids are reused)
ENDED = "(ended processes, after their last sample)"  # by_process's name for their CPU
T = TypeVar("T")


class Seen(NamedTuple):
    """A process at one sample."""

    name: str
    own: float  # its CPU seconds (user + system)
    children: float  # its reaped children's, theirs included (what the kernel adds on reaping)
    parent: int  # its parent's pid
    member: bool  # of the set measured; else the parent of one, or the reaper


class ProcessCpu:
    """CPU seconds (user + system) that a set of processes spent in consecutive windows of
    `seconds` from `start` (epoch): `windows` of them, or, if None, until `last()` names
    the last. A thread samples every process at each window's edges and every CPU_SAMPLE_S
    between; a window's closing sample is the next one's opening, so steps that follow each
    other lose nothing between them. `processes()` names the set each time; their parents
    are sampled too, for what their children spent after their last sample (CpuWindow), and
    so is `reaper`, a process outside the set whose children that end are the set's (the
    bench's own, for the system under test: the generators it started too run until their
    pool closes). A process of the set that leaves it alive (its parent ended, and it was
    re-parented to PID 1 or a subreaper) stays of it until it ends. `others` names children
    of the reaper outside the set: sampled too, so that what the reaper's counters gain when
    one ends is not taken for the set's."""

    def __init__(self, processes: Callable[[], Iterable[psutil.Process]], start: float,
                 seconds: float, windows: int | None = 1, reaper: psutil.Process | None = None,
                 others: Callable[[], Iterable[psutil.Process]] = list):
        self.processes, self.reaper, self.others = processes, reaper, others
        self.start, self.seconds = start, seconds
        self._last = math.inf if windows is None else windows - 1
        self._windows: list[CpuWindow] = []
        self._members: set[Key] = set()  # of the set at the last sample
        self._closed = threading.Condition()
        self._error: BaseException | None = None  # what ended the sampling thread, if it failed
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="process-cpu", daemon=True)
        self._thread.start()

    def last(self, index: int) -> None:
        """Window `index` is the last (it has not closed yet)."""
        self._last = index

    def stop(self) -> None:
        """Stop sampling (no further window closes); returns once the thread has ended."""
        self._stopped.set()
        self._thread.join()

    def window(self, index: int = 0) -> CpuWindow:
        """Window `index`, once it has closed; what failed the sampling thread, if it did
        before then."""
        with self._closed:
            self._closed.wait_for(lambda: len(self._windows) > index or self._error is not None)
            if len(self._windows) > index:
                return self._windows[index]
            raise self._error

    def _sample(self) -> None:
        try:
            self._windows_until_last()
        except BaseException as exc:  # for window()'s callers, who would wait forever
            with self._closed:
                self._error = exc
                self._closed.notify_all()

    def _windows_until_last(self) -> None:
        if self._stopped.wait(max(0.0, self.start - time.time())):
            return
        seen = self._cpu_s()
        index = 0
        while True:
            window = CpuWindow(self.start + index * self.seconds, seen,
                               self.reaper.pid if self.reaper else None)
            end = window.start + self.seconds
            when = window.start
            while when < end:
                when = min(when + CPU_SAMPLE_S, end)
                if self._stopped.wait(max(0.0, when - time.time())):
                    return
                seen = self._cpu_s()
                window.add(seen)
            with self._closed:
                self._windows.append(window)
                self._closed.notify_all()
            if index >= self._last:
                return
            index += 1

    def _cpu_s(self) -> dict[Key, Seen]:
        """The set's processes, their parents outside it and the reaper, as they are now."""
        seen: dict[Key, Seen] = {}
        for proc in self.processes():
            _look(proc, True, seen)
        for pid, started in self._members - seen.keys():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == started:  # not another process given its pid
                    _look(proc, True, seen)
        self._members = {key for key, s in seen.items() if s.member}
        for proc in self.others():
            _look(proc, False, seen)
        outside = {s.parent for s in seen.values()} - {pid for pid, _ in seen}
        for pid in outside - {self.reaper.pid if self.reaper else None}:
            with contextlib.suppress(psutil.Error):
                _look(psutil.Process(pid), False, seen)
        if self.reaper is not None:
            _look(self.reaper, False, seen)
        for gone in _scripts.keys() - seen.keys():  # reaped: its name is not needed again
            del _scripts[gone]
        return seen


def _look(proc: psutil.Process, member: bool, seen: dict[Key, Seen]) -> None:
    with contextlib.suppress(psutil.Error), proc.oneshot():
        times = proc.cpu_times()
        key = proc.pid, proc.create_time()
        seen[key] = Seen(_process_name(key, proc), times.user + times.system,
                         times.children_user + times.children_system, proc.ppid(), member)


# A Python process's name from its script, kept: an exited, unreaped one has no command line
# any more (psutil raises ZombieProcess), and its last samples still count under that name.
_scripts: dict[Key, str] = {}


class CpuWindow:
    """What the processes spent in one window of a ProcessCpu. A process alive at its start
    counts what it spent since, one started inside it all it spent. One that ended inside it
    counts what it had spent at the last sample that saw it, and its parent, when that is in
    the set or the reaper, what it spent after (reaped, a process's CPU and its reaped
    children's are added to its parent's children counters), as does a child born and reaped
    between two samples, never seen (under ENDED). The figure is a lower bound (`partial`)
    when a process ended whose parent is neither, or such a parent's counters grew by more
    than its children seen to end had spent, or a process that began before the window was
    first seen inside it (what it spent from then counts)."""

    def __init__(self, start: float, opening: dict[Key, Seen], reaper: int | None):
        self.start, self._reaper = start, reaper
        self._born_from = _on_create_time_clock(start)
        # CPU seconds (own, children's) at the start, or when first seen
        self._baseline = {key: (s.own, s.children) for key, s in opening.items()}
        self._latest = dict(opening)  # at the last sample that saw it
        self._alive = set(opening)  # seen by the last sample
        self._missed = False  # a process of the set alive at the start was not seen then

    def add(self, seen: dict[Key, Seen]) -> None:
        for key, s in seen.items():
            if key not in self._baseline:
                born_inside = key[1] >= self._born_from
                self._baseline[key] = (0.0, 0.0) if born_inside else (s.own, s.children)
                self._missed |= s.member and not born_inside
        self._latest.update(seen)
        self._alive = set(seen)

    def _tracked(self, key: Key) -> bool:
        """A process whose reaped children are the set's: one of it, or the reaper."""
        return self._latest[key].member or key[0] == self._reaper

    def _accounts(self) -> tuple[Counter, bool]:
        """CPU seconds in the window by name (under ENDED, what ended processes spent after
        their last sample), and whether some of it went unseen."""
        spent: Counter = Counter()
        # each process's children counters' growth, less what its children that ended had
        # spent by their last sample (all their lives': that is what reaping adds)
        unseen: dict[Key, float] = {}
        for key, s in self._latest.items():
            own, children = self._baseline[key]
            if s.member:
                spent[s.name] += s.own - own
            unseen[key] = s.children - children
        pids = {key[0]: key for key in self._latest}
        partial = self._missed
        for key in self._latest.keys() - self._alive:
            s = self._latest[key]
            parent = pids.get(s.parent)
            if parent is not None:
                unseen[parent] -= s.own + s.children
            partial |= s.member and (parent is None or not self._tracked(parent))
        for key, cpu_s in unseen.items():
            if self._tracked(key):
                spent[ENDED] += cpu_s
            else:
                partial |= cpu_s > TICK_S / 2
        spent[ENDED] = max(spent[ENDED], 0.0)  # what rounding to clock ticks leaves below
        return spent, partial

    @property
    def partial(self) -> bool:
        """What some process of the set spent in the window went unseen."""
        return self._accounts()[1]

    def per_request(self, answered: int) -> tuple[float, float | None]:
        """(CPU seconds in the window, µs of it per request answered)."""
        spent = max(sum(self._accounts()[0].values()), 0.0)
        return round(spent, 3), round(spent / answered * 1e6, 1) if answered else None

    def by_process(self, answered: int, scale: float = 1e6) -> dict[str, float]:
        """CPU seconds × `scale` per request answered (µs by default), by process name, the
        costliest first."""
        if not answered:
            return {}
        spent = self._accounts()[0]
        return {name: round(s / answered * scale, 1)
                for name, s in sorted(spent.items(), key=lambda x: -x[1]) if s > 0}


def _on_create_time_clock(epoch: float) -> float:
    """`epoch` as psutil's create_time reads it: the boot time /proc/stat gives (whole
    seconds, so up to one off the wall clock) plus the clock ticks from boot to the start,
    whole ticks (a process started in the tick `epoch` falls in reads as started at it)."""
    since_boot = epoch - time.time() + time.clock_gettime(time.CLOCK_BOOTTIME)
    return psutil.boot_time() + since_boot - TICK_S


def _process_name(key: Key, proc: psutil.Process) -> str:
    """A Ray actor's process title names the method it is running (ray::ShardActor.stats):
    the actor's class alone, so that a process keeps one name whatever it was doing. A Python
    process running a script is "python <script>" (Ray's head runs three, all "python":
    log_monitor.py, dashboard.py, the autoscaler's monitor.py), so a report tells them apart;
    `-m` and `-c` keep the title."""
    title = proc.name()
    if title.startswith("ray::"):
        return title.split(".", 1)[0]
    if not title.startswith("python"):
        return title
    if key not in _scripts:
        with contextlib.suppress(psutil.Error):  # unreadable: the title, looked at again
            script = script_of(proc.cmdline())
            _scripts[key] = f"python {script}" if script else title
    return _scripts.get(key, title)


def script_of(cmdline: list[str]) -> str | None:
    """The file name of the script a Python command line runs, if it runs one."""
    args = iter(cmdline[1:])
    for arg in args:
        if arg in ("-c", "-m") or arg == "-":
            return None
        if arg in ("-W", "-X"):  # options that take the next argument
            next(args, None)
        elif not arg.startswith("-"):
            return os.path.basename(arg) if arg.endswith(".py") else None
    return None


def server_cpu(generators: set[int], start: float, seconds: float,
               windows: int | None = 1) -> ProcessCpu:
    """The system under test: every process this bench started, directly or not (servers,
    redis-server, Ray's daemons and actors), but the load generators. Only one system runs
    at a time, so that is the system's own processes, the server side only; the bench's
    own process reaps those it started itself, and the generators too when their pool
    closes or a worker dies."""
    return ProcessCpu(lambda: [p for p in psutil.Process().children(recursive=True)
                               if p.pid not in generators], start, seconds, windows,
                      reaper=psutil.Process(), others=lambda: _existing(generators))


def server_cpu_during(generators: set[int], work: Callable[[], T]) -> tuple[T, float]:
    """`work()`'s answer and the CPU seconds server_cpu's processes spent while it ran,
    between two samples: for a short call into long-lived processes (a snapshot between
    steps), so what a process that started or ended meanwhile spent is left out."""
    def own() -> dict[Key, float]:
        seen: dict[Key, Seen] = {}
        for proc in psutil.Process().children(recursive=True):
            if proc.pid not in generators:
                _look(proc, True, seen)
        return {key: s.own for key, s in seen.items()}

    before = own()
    answer = work()
    after = own()
    return answer, round(sum(after[key] - before[key] for key in after.keys() & before), 3)


def _existing(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes of `pids` still running (one may end as it is looked up)."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found.append(psutil.Process(pid))
    return found


def generator_cpu(generators: set[int], start: float, seconds: float,
                  windows: int | None = 1) -> ProcessCpu:
    """The load generators themselves: what the bench costs the machine it shares."""
    return ProcessCpu(lambda: _existing(generators), start, seconds, windows)
