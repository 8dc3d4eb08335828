"""A profile table's reserved rows stay out of memory whatever the process freed before
(state.py `_zero_pages`): np.zeros, by glibc's calloc, cleared the heap memory it reused; and
its large columns are on huge pages, as numpy's own are."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kairos.core.compiler import default_compiled
from kairos.core.state import HUGE_PAGES_BYTES, ProfileTable

# In a process of its own: what glibc reuses, and clears, depends on what the process freed
# before (a heap whose pages are resident already grows no more when they are cleared again)
GROWN = """
import json, numpy as np, psutil
from kairos.core.compiler import default_compiled
from kairos.core.state import ProfileTable
compiled, process = default_compiled(), psutil.Process()
freed = np.ones(4_000_000)  # 32 MB freed: glibc then serves blocks up to that from its heap
del freed
grown = []
for _ in range(3):  # a first table may take fresh heap, which needs no clearing
    before = process.memory_info().rss
    table = ProfileTable(compiled, capacity=2_000_000)  # about a shard's reserve by default
    grown.append(process.memory_info().rss - before)
    del table
print(json.dumps(grown))
"""


def test_reserved_rows_stay_out_of_memory_after_the_process_freed_a_large_block():
    done = subprocess.run([sys.executable, "-c", GROWN], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    grown = json.loads(done.stdout)
    assert max(grown) < 8 << 20, grown  # np.zeros: 49-52 MB, the small columns all cleared


def test_large_columns_ask_for_huge_pages_as_numpy_does_and_small_ones_are_numpys_own():
    numpys = np.zeros(2 * HUGE_PAGES_BYTES, np.uint8)
    if "hg" not in _flags(numpys):  # a kernel, or a numpy, that does not ask for them
        pytest.skip("numpy's own zeros have no huge-page advice here")
    table = ProfileTable(default_compiled(), capacity=100_000)
    assert table.values.nbytes >= HUGE_PAGES_BYTES
    assert "hg" in _flags(table.values)  # MADV_HUGEPAGE
    small = ProfileTable(default_compiled(), capacity=1)
    assert small.values.base is None  # np.zeros: no mapping, system calls or page of its own


def _flags(column: np.ndarray) -> list[str]:
    """The VmFlags of the mapping that holds `column`'s middle byte (numpy advises from the
    first page boundary inside its block, not the page its first byte is on)."""
    middle = column.__array_interface__["data"][0] + column.nbytes // 2
    return next(flags.split() for low, high, flags in _areas() if low <= middle < high)


def _areas() -> list[tuple[int, int, str]]:
    """Each mapping of this process: its start, its end and its VmFlags."""
    found, area = [], None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if not head.endswith(":"):  # an area's first line: start-end perms ...
                area = [int(x, 16) for x in head.split("-")]
            elif head == "VmFlags:":
                found.append((area[0], area[1], line.split(":", 1)[1]))
    return found
