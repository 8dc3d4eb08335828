"""Kubernetes resource quantities ("512Mi", "16Gi", "2G") as numbers."""
from __future__ import annotations

import re

SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(quantity: str) -> int:
    """A whole-number memory quantity in bytes (a fraction or an exponent: ValueError)."""
    found = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity)
    if found is None:
        raise ValueError(f"not a whole-number quantity: {quantity!r}")
    return int(found[1]) * SUFFIXES[found[2] or ""]
