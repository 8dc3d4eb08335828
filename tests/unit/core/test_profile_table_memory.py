"""A profile table's reserved rows stay out of memory whatever the process freed before
(state.py `_zero_pages`): np.zeros, by glibc's calloc, cleared the heap memory it reused; and
its large columns are on huge pages, as numpy's own are."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
                          timeout=120, check=True)
    grown = json.loads(done.stdout)
    assert max(grown) < 8 << 20, grown  # np.zeros: 49-52 MB, the small columns all cleared


@pytest.mark.skipif(not Path("/sys/kernel/mm/transparent_hugepage").exists(),
                    reason="a kernel without transparent huge pages")
def test_large_columns_ask_for_huge_pages_and_small_ones_are_numpys_own():
    table = ProfileTable(default_compiled(), capacity=100_000)
    assert table.values.nbytes >= HUGE_PAGES_BYTES
    start = table.values.__array_interface__["data"][0]
    flags = next(flags for low, high, flags in _areas() if low <= start < high)
    assert "hg" in flags.split(), flags  # MADV_HUGEPAGE
    small = ProfileTable(default_compiled(), capacity=1)
    assert small.values.base is None  # np.zeros: no mapping, system calls or page of its own


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
