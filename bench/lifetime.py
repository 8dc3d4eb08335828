"""Helper processes must not outlive the run.

The run cleans up after itself when it ends or is interrupted, but its process can also die
without unwinding: Ray aborts a driver whose cluster vanished (a `ray stop` elsewhere on the
machine stops every local Ray). Load generators and peer servers then watch their parent and
exit when it is gone.
"""
from __future__ import annotations

import os
import threading
import time

PARENT_POLL_S = 1.0


def exit_with_parent(parent_pid: int) -> None:
    """Exit this process (at once, without cleanup) once `parent_pid` is no longer its parent."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
