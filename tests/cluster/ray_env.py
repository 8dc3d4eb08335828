"""Tunables for the Ray processes a test module starts: the workers inherit the environment
of the process that starts Ray, so the module sets it first and puts it back afterwards."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def tuned(overrides: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
