"""A profile table's reserved rows stay out of memory whatever the process freed before
(state.py `_zero_pages`): np.zeros, by glibc's calloc, cleared the heap memory it reused."""
from __future__ import annotations

import numpy as np
import psutil

from kairos.core.compiler import default_compiled
from kairos.core.state import ProfileTable

ROWS = 2_000_000  # about what a shard reserves at the default resident limit


def test_reserved_rows_stay_out_of_memory_after_the_process_freed_a_large_block():
    compiled = default_compiled()
    process = psutil.Process()
    freed = np.ones(4_000_000)  # 32 MB freed: glibc then serves blocks up to that from its heap
    del freed
    grown = []
    for _ in range(3):  # a first table may take fresh heap, which needs no clearing
        before = process.memory_info().rss
        table = ProfileTable(compiled, capacity=ROWS)
        grown.append(process.memory_info().rss - before)
        del table
    assert max(grown) < 8 << 20, grown  # np.zeros: 52 MB, the small columns all cleared
