"""The server CPU of a step (bench/cpu.py's ProcessCpu) keeps what processes spent inside
the window when some end in it, start in it or change their title in it (Ray reaps workers,
starts others, and retitles an actor by the method it runs)."""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time

import psutil
import pytest

from bench.cpu import ProcessCpu, script_of, server_cpu
from tests.support.waiting import wait_until

# Names itself, waits for a line, burns CPU, renames itself, says so, and lives until its
# stdin closes. PR_SET_NAME sets the title psutil reads.
CHILD = """import ctypes, sys, time
libc = ctypes.CDLL(None)
libc.prctl(15, sys.argv[1].encode(), 0, 0, 0)
sys.stdin.readline()
started = time.process_time()
while time.process_time() - started < float(sys.argv[2]):
    pass
libc.prctl(15, sys.argv[3].encode(), 0, 0, 0)
print("burnt", flush=True)
sys.stdin.read()
"""
BEFORE_S, INSIDE_S = 0.5, 0.3  # CPU the first child spends before the window, the second in it


class Child:
    def __init__(self, name: str, burn_s: float, renamed: str):
        self.process = subprocess.Popen([sys.executable, "-c", CHILD, name, str(burn_s),
                                         renamed], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.pid = self.process.pid

    def burn(self) -> None:
        """Returns once the child has spent its CPU."""
        self.process.stdin.write("burn\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "burnt"

    def end(self) -> None:
        """The child exits and is reaped at once, as Ray's raylet reaps its workers."""
        self.process.stdin.close()
        self.process.wait()


def test_cpu_spent_in_the_window_survives_processes_ending_starting_and_renaming():
    ours: set[int] = set()
    old = Child("cpu-old", BEFORE_S, "cpu-old")
    ours.add(old.pid)
    new = None
    try:
        old.burn()  # its CPU is all spent before the window
        start = time.time() + 0.2
        cpu = ProcessCpu(lambda: [p for p in psutil.Process().children() if p.pid in ours],
                         start, 3.0)
        time.sleep(max(start + 0.3 - time.time(), 0.0))
        old.end()  # seen at the start, gone before the end
        new = Child("ray::Burner", INSIDE_S, "ray::Burner.go")
        ours.add(new.pid)
        new.burn()  # all its CPU inside the window, under another title at the end
        window = cpu.window()
        spent_s, _ = window.per_request(1)
        by_name = window.by_process(1, 1.0)
    finally:
        old.end()
        if new is not None:
            new.end()
    # before: the old child's lifetime CPU came off the total (clamped to 0), and the new
    # child's renaming left it out of the by-process figures
    assert spent_s >= INSIDE_S * 0.9, (spent_s, by_name)
    # named as a Ray actor is, by its class, whatever method its title named last
    assert by_name.get("ray::Burner", 0.0) >= INSIDE_S * 0.9, by_name
    assert by_name.get("cpu-old", 0.0) < INSIDE_S / 2, by_name
    assert window.partial  # a process ended in the window: the figure is a lower bound


def test_consecutive_windows_lose_nothing_between_them():
    """Continuous traffic's steps: the CPU a process spends across the boundary of two
    windows falls in one or the other. (Its burn starts 0.2 s before the boundary and has
    the second window's 2 s to spend 0.3 s of CPU: on a loaded machine, 0.6 s of CPU from a
    second before a 1.5 s boundary ran past the second window's end.)"""
    child = Child("cpu-across", INSIDE_S, "cpu-across")
    try:
        start = time.time() + 0.2
        cpu = ProcessCpu(lambda: [psutil.Process(child.pid)], start, 2.0, windows=2)
        time.sleep(max(start + 1.8 - time.time(), 0.0))
        child.burn()  # across the boundary: 0.3 s of CPU takes 0.3 s at least
        burnt = time.time()
        spent_s = sum(cpu.window(k).per_request(1)[0] for k in (0, 1))
    finally:
        child.end()
    assert burnt < start + 4.0, "the burn outlasted the windows: a machine too loaded to judge"
    assert spent_s >= INSIDE_S * 0.9, spent_s
    assert not cpu.window(1).partial


def test_a_process_from_before_the_window_first_seen_inside_it_counts_from_then():
    """A process the window's first sample did not see, but that started before the window
    (Ray's processes are listed by who their parent is now), spent its earlier CPU before
    the window: the figure leaves it out, and says it may have missed some (partial)."""
    ours: set[int] = set()
    late = Child("cpu-late", BEFORE_S, "cpu-late")
    try:
        late.burn()  # before the window
        start = time.time() + 0.2
        cpu = ProcessCpu(lambda: [p for p in psutil.Process().children() if p.pid in ours],
                         start, 2.0)
        time.sleep(max(start + 0.3 - time.time(), 0.0))
        ours.add(late.pid)  # seen from the next sample on
        window = cpu.window()
    finally:
        late.end()
    assert window.by_process(1, 1.0).get("cpu-late", 0.0) < BEFORE_S / 2, window.by_process(1)
    assert window.partial


# Burns CPU and exits: a child that lives less than the seconds between two samples.
BLINK = """import sys, time
started = time.process_time()
while time.process_time() - started < float(sys.argv[1]):
    pass
"""


def test_a_child_born_and_reaped_between_two_samples_keeps_its_cpu(monkeypatch):
    """Never seen, what the child spent is in its parent's children counters (reaping adds
    it there): counted when its parent is the set's reaper (the bench's own process, for the
    system under test), else at least the figure says it is a lower bound. The window is
    sampled at its two ends only, and the child starts once the first sample is taken: on a
    loaded machine a sample a second in saw the child still burning, and counted it."""
    monkeypatch.setattr("bench.cpu.CPU_SAMPLE_S", 4.0)
    waiting = Child("cpu-waiting", 0.0, "cpu-waiting")  # of the set: its parent is sampled
    windows = []
    try:
        for reaper in (psutil.Process(), None):
            cpu = ProcessCpu(lambda: psutil.Process().children(), time.time(), 4.0,
                             reaper=reaper)
            wait_until(lambda: cpu._members, 30.0, "the window's first sample")  # `waiting`
            subprocess.run([sys.executable, "-c", BLINK, str(INSIDE_S)], check=True)
            windows.append(cpu.window())
    finally:
        waiting.end()
    reaped, unclaimed = windows
    assert reaped.per_request(1)[0] >= INSIDE_S * 0.9, reaped.by_process(1, 1.0)
    assert not reaped.partial
    assert unclaimed.partial


# Starts a grandchild (ORPHAN) and says its pid, then exits on a line; the grandchild, named
# by argv[2], burns argv[3] seconds once the file argv[1] + ".go" exists, then says so by
# argv[1] + ".done", and lives until killed.
ORPHAN = """import ctypes, os, sys, time
libc = ctypes.CDLL(None)
libc.prctl(15, sys.argv[2].encode(), 0, 0, 0)
while not os.path.exists(sys.argv[1] + ".go"):
    time.sleep(0.01)
started = time.process_time()
while time.process_time() - started < float(sys.argv[3]):
    pass
open(sys.argv[1] + ".done", "w").close()
time.sleep(60)
"""
PARENT = """import subprocess, sys, os
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
print(child.pid, flush=True)
sys.stdin.readline()
os._exit(0)
"""


def test_a_process_that_leaves_the_tree_alive_stays_measured(tmp_path):
    """A process whose parent ends is re-parented out of the bench's tree (to PID 1, or a
    subreaper): it has not ended, and what it spends after is the set's."""
    flag = str(tmp_path / "flag")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, ORPHAN, flag, "cpu-orphan",
                               str(INSIDE_S)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    orphan = psutil.Process(int(parent.stdout.readline()))
    ours = {parent.pid, orphan.pid}
    try:
        start = time.time() + 0.2
        cpu = ProcessCpu(lambda: [p for p in psutil.Process().children(recursive=True)
                                  if p.pid in ours], start, 2.5, reaper=psutil.Process())
        time.sleep(max(start + 0.3 - time.time(), 0.0))
        parent.stdin.close()
        parent.wait()  # reaped by this process; the orphan leaves the tree
        assert orphan.ppid() != parent.pid and orphan.pid not in {
            p.pid for p in psutil.Process().children(recursive=True)}
        open(flag + ".go", "w").close()
        while not os.path.exists(flag + ".done"):
            time.sleep(0.01)
        window = cpu.window()
    finally:
        orphan.kill()
    by_name = window.by_process(1, 1.0)
    # before: its CPU after it left was lost, and its total came off its parent's reaping
    assert by_name.get("cpu-orphan", 0.0) >= INSIDE_S * 0.9, by_name
    assert window.per_request(1)[0] >= INSIDE_S * 0.9, by_name


def test_a_generator_reaped_in_the_window_is_not_server_cpu():
    """The bench's own process reaps the load generators too: what one had spent, added to
    the reaper's counters when it ends in the window, is not the system under test's."""
    generator = Child("cpu-generator", BEFORE_S, "cpu-generator")
    try:
        generator.burn()  # before the window
        cpu = server_cpu({generator.pid}, time.time() + 0.2, 1.5)
        time.sleep(0.5)
        generator.end()  # reaped by this process inside the window
        window = cpu.window()
    finally:
        generator.end()
    assert window.per_request(1)[0] < BEFORE_S / 2, window.by_process(1, 1.0)


def test_a_failed_sampler_fails_the_window_it_would_close():
    """What fails the sampling thread reaches window()'s caller, who would otherwise wait
    for good."""
    def processes():
        raise psutil.AccessDenied(os.getpid())

    cpu = ProcessCpu(processes, time.time(), 1.0)
    raised: queue.Queue = queue.Queue()

    def wait() -> None:
        try:
            cpu.window()
        except psutil.AccessDenied as exc:
            raised.put(exc)

    threading.Thread(target=wait, daemon=True).start()
    # a guard against the hang it tests for, not a timing: the first sample fails at once
    assert isinstance(raised.get(timeout=30), psutil.AccessDenied)


def test_a_python_process_running_a_script_is_named_by_the_script(tmp_path):
    """Ray's head runs three Python daemons (log_monitor.py, dashboard.py, monitor.py) that
    were all "python" in a report; each is named by its script now."""
    script = tmp_path / "log_monitor.py"
    script.write_text(BLINK + "sys.stdin.read()\n")  # burns, then lives until stdin closes
    child = subprocess.Popen([sys.executable, "-u", str(script), str(INSIDE_S)],
                             stdin=subprocess.PIPE)
    try:
        cpu = ProcessCpu(lambda: [psutil.Process(child.pid)], time.time() + 0.1, 1.5)
        by_name = cpu.window().by_process(1, 1.0)
    finally:
        child.stdin.close()
        child.wait()
    named = [name for name in by_name if name.endswith(" log_monitor.py")]
    assert named and named[0].startswith("python"), by_name


def test_an_exited_python_process_not_yet_reaped_keeps_its_cpu_and_its_place(tmp_path):
    """A zombie has no command line (psutil raises ZombieProcess) but its CPU is still read:
    naming a Python process by its script must not lose the sample (review rev-bench H1).
    One that ends in the window and is reaped after it counts what it spent in it; one that
    was a zombie before the window opened and is reaped inside it counts nothing."""
    start = time.time() + 0.1
    cpu = ProcessCpu(lambda: psutil.Process().children(), start, 2.5, reaper=psutil.Process())
    time.sleep(max(start + 0.1 - time.time(), 0.0))
    ended_in = subprocess.Popen([sys.executable, "-c", BLINK, str(INSIDE_S * 2)])
    window = cpu.window()  # it ended inside the window, unreaped until after it
    ended_in.wait()
    assert window.per_request(1)[0] >= INSIDE_S * 2 * 0.9, window.by_process(1, 1.0)

    ended_before = subprocess.Popen([sys.executable, "-c", BLINK, str(INSIDE_S * 2)])
    while psutil.Process(ended_before.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.05)
    cpu = ProcessCpu(lambda: psutil.Process().children(), time.time() + 0.2, 1.5,
                     reaper=psutil.Process())
    time.sleep(0.8)
    ended_before.wait()  # reaped inside the window: its life's CPU reaches our counters
    window = cpu.window()
    assert window.per_request(1)[0] < INSIDE_S / 2, window.by_process(1, 1.0)


@pytest.mark.parametrize("cmdline, script", [
    (["python", "-u", "/x/ray/_private/log_monitor.py", "--logs-dir", "/t"], "log_monitor.py"),
    (["python3.11", "-W", "ignore", "-X", "importtime", "a b/dashboard.py"], "dashboard.py"),
    (["python", "-m", "ray.util.client.server"], None),
    (["python", "-c", "print(1)"], None),
    (["python"], None),
    ([], None)])
def test_the_script_a_python_command_line_runs(cmdline, script):
    assert script_of(cmdline) == script
