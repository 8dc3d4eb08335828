"""The checks a customer block passes before a row of it is written (blocks.py).

Blocks come back from disk, Redis and other processes, so nothing read from one is trusted as
an index: `validate` checks every length, shape, type and code (integers as integers that the
table's column types hold, ring heads against the ring's size, codes against the block's own
lists and Outcome) and the shape of each customer's extras before a row is written, and a
block that fails is BlockCorrupt, never an IndexError, ValueError or OverflowError (or a
keeper's TypeError) or a row half loaded. The import writes the integer columns `validate`
hands back, converted to the table's types, never the block's own values: a msgpack list of
Python ints is an int64 array to the checks, and written as it is, a value past the table's
type raised OverflowError (a wider array's wrapped silently).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from kairos.core.compiler import Outcome
from kairos.core.state import EMPTY

FORMAT = 1
RING_COLUMNS = ("ring_action", "ring_channel", "ring_outcome", "ring_time")
PER_ROW = ("ring_head", "applied", "lsn", "extras")  # one value per customer
# the profile table's type of each integer column (core/state.py's ProfileTable)
TABLE_TYPES = {"ring_action": np.int16, "ring_channel": np.int8, "ring_outcome": np.int8,
               "ring_time": np.int32, "ring_head": np.int32, "applied": np.int64,
               "lsn": np.int64}
INTEGER_COLUMNS = tuple(TABLE_TYPES)
NAMES = ("ids", "slots", "actions", "channels", "strings")  # lists of text
# a used ring entry's codes, contiguous, so checked as a range (np.isin cost 22-29 us a home)
FIRST_OUTCOME, LAST_OUTCOME = min(Outcome).value, max(Outcome).value
# bytes of each slot's digest in a block's `meanings`: a block travels with every decision the
# log keeps, so a digest rather than the definition (a changed one goes unseen 1 in 2**32)
MEANING_BYTES = 4


class BlockCorrupt(ValueError):
    """A customer block that does not hold together (damaged, or not a block)."""


def validate(block: Any, shard: bool = False) -> dict[str, np.ndarray]:
    """Each integer column of the block as the table's type (none for a block of no
    customers), what a load writes; BlockCorrupt unless every length, shape, type and code of
    the block is in range, and nothing else whatever it holds. `shard`: a shard's block (a
    home, snapshot or handoff), whose customers' extras are maps, never none as in the
    decision log's."""
    if not isinstance(block, dict):
        raise BlockCorrupt(f"a customer block is a map, not {type(block).__name__}")
    # an int, and the journal a name, before either is compared: an array compared with ==
    # is no truth value (a ValueError out of the load, once it had written the rows)
    if type(block.get("format")) is not int or block["format"] != FORMAT:
        raise BlockCorrupt(f"customer block format {block.get('format')!r} is not {FORMAT}")
    if block.get("journal") is not None and type(block["journal"]) is not str:
        raise _corrupt(f"a journal of type {type(block['journal']).__name__}, not a name")
    try:
        n, slots = len(block["ids"]), len(block["slots"])
        values = np.asarray(block["values"])
        columns = {name: np.asarray(block[name]) for name in INTEGER_COLUMNS}
        lengths = [(name, len(block[name])) for name in PER_ROW]
        strings, flags = len(block["strings"]), np.asarray(block["string_columns"], bool)
        actions, channels = len(block["actions"]), len(block["channels"])
        meanings = block.get("meanings")  # absent from blocks written before it was added
    except (KeyError, TypeError, ValueError) as exc:  # ValueError: ragged lists as arrays
        raise BlockCorrupt(f"a customer block lacks a well-formed {exc}") from None
    if meanings is not None and (not isinstance(meanings, bytes) or
                                 len(meanings) != slots * MEANING_BYTES):
        raise _corrupt(f"meanings that are not {MEANING_BYTES} bytes for each of {slots} slots")
    if not all(isinstance(block[name], _LIST) and _ids(block[name]) for name in NAMES):
        raise _corrupt(f"{', '.join(NAMES)} that are not all lists of text")
    if (values.shape != (n, slots) or values.dtype.kind not in "fiu") and (n or values.size):
        raise _corrupt(f"values of shape {values.shape} {values.dtype}, not {n} x {slots} numbers")
    if flags.shape != (slots,):
        raise _corrupt(f"string-column flags of shape {flags.shape} for {slots} slots")
    for name, length in lengths:
        if length != n:
            raise _corrupt(f"{length} {name} entries for {n} customers")
    for extra in block["extras"]:
        _check_extra(extra, shard)
    if not n:
        return {}
    size = columns["ring_action"].shape[1] if columns["ring_action"].ndim == 2 else 0
    for name, column in columns.items():
        if column.shape != ((n, size) if name in RING_COLUMNS else (n,)) or not size:
            raise _corrupt(f"{name} of shape {column.shape} for {n} customers and a history")
        if column.dtype.kind not in "iu":  # the table would cast a float: NaN to -2**31
            raise _corrupt(f"{name} of type {column.dtype}, not integers")
        columns[name] = _as_table_type(name, column)
    # each range as a mask, not a min and a max, which compare False with a NaN
    heads, action, channel = (columns[name] for name in ("ring_head", *RING_COLUMNS[:2]))
    if not np.all((heads >= 0) & (heads < size)):
        raise _corrupt(f"ring_head outside 0..{size - 1}")
    if not np.all((action >= EMPTY) & (action < actions)):
        raise _corrupt(f"ring_action codes outside -1..{actions - 1}")
    used = action != EMPTY
    if not np.all(((channel >= 0) & (channel < channels)) | (~used & (channel == 0))):
        raise _corrupt(f"ring_channel codes outside 0..{channels - 1}")
    outcome = columns["ring_outcome"]  # an unused entry's is unread
    if not np.all(((outcome >= FIRST_OUTCOME) & (outcome <= LAST_OUTCOME)) | ~used):
        raise _corrupt(f"ring_outcome codes outside {FIRST_OUTCOME}..{LAST_OUTCOME}")
    if flags.any():
        codes = values[:, flags].astype(np.float64)
        known = codes[~np.isnan(codes)]
        if not np.all((known >= 0) & (known < strings) & (known == np.floor(known))):
            raise _corrupt(f"string codes outside 0..{strings - 1}")
    return columns


def _as_table_type(name: str, column: np.ndarray) -> np.ndarray:
    """An integer column as the table's type; BlockCorrupt where a value is past it (any
    entry, used or not: the whole ring is written)."""
    kind = TABLE_TYPES[name]
    # the table's own type first: what the shard's blocks hold, and can_cast costs 0.7 us
    if column.dtype.type is not kind and not np.can_cast(column.dtype, kind):
        low, high = np.iinfo(kind).min, np.iinfo(kind).max
        if not np.all((column >= low) & (column <= high)):
            raise _corrupt(f"{name} values outside {low}..{high}, the table's {np.dtype(kind)}")
    return column.astype(kind, copy=False)


def _check_extra(extra: Any, shard: bool) -> None:
    """BlockCorrupt unless a customer's extras are none (the decision log's blocks, not
    `shard`) or a map of the shape the shard writes: its timers (residency.py), watches and
    what was pushed (watches.py), aliases and links (identities.py), idempotency keys
    (keys.py), taught labels (outcomes.py) and whether it has a home. Keys this version does
    not know are let be. (Once per customer of every snapshot recovery reads: an empty value
    costs a type check only.)"""
    if extra is None and not shard:
        return
    if type(extra) is not dict or "timers" not in extra or "watches" not in extra:
        raise _corrupt("extras that are not a map with timers and watches")
    for key, value in extra.items():
        shape = _EXTRA_SHAPES.get(key)
        if shape is not None and not (isinstance(value, shape[0]) and
                                      (not value or shape[1](value))):
            raise _corrupt(f"extras whose {key!r} is not {shape[1].__doc__}")


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _timers(value: dict) -> bool:
    """a map of timer names to due times"""
    return all(type(k) is str and _number(v) for k, v in value.items())


def _watches(value: list) -> bool:
    """a list of [sink, channel, placement or None, and the id registered by]"""
    return all(isinstance(w, (list, tuple)) and len(w) in (3, 4) and
               all(type(x) is str for x in (w[0], w[1], *w[3:])) and
               (w[2] is None or type(w[2]) is str) for w in value)


def _shown(value: list) -> bool:
    """a list of [channel, placement or None, the actions pushed]"""
    return all(isinstance(v, (list, tuple)) and len(v) == 3 and type(v[0]) is str and
               (v[1] is None or type(v[1]) is str) and isinstance(v[2], (list, tuple)) and
               all(type(a) is str for a in v[2]) for v in value)


def _ids(value: list) -> bool:
    """a list of strings"""
    return all(type(x) is str for x in value)


def _key_records(value: bytes) -> bool:
    """whole key records"""
    return len(value) % KEY_RECORD_BYTES == 0


def _keys(value: list) -> bool:
    """a list of [key, sequence 0..2**64-1, when]"""
    # keys.py packs the sequence as a uint64 (struct.error past it, after the load)
    return all(isinstance(k, (list, tuple)) and len(k) == 3 and type(k[0]) is str and
               type(k[1]) is int and 0 <= k[1] < 2**64 and _number(k[2]) for k in value)


def _flag(value: bool) -> bool:
    """true or false"""
    return True


_LIST = (list, tuple)
_EXTRA_SHAPES: dict[str, tuple[Any, Callable[[Any], bool]]] = {
    "timers": (dict, _timers), "watches": (_LIST, _watches), "shown": (_LIST, _shown),
    "aliases": (_LIST, _ids), "links": (_LIST, _ids), "key_records": (bytes, _key_records),
    "label_records": (bytes, _key_records), "keys": (_LIST, _keys), "home": (bool, _flag)}
# keys.py's RECORD.size (a digest, a sequence, a time; a taught label's too), which storage
# does not import
KEY_RECORD_BYTES = 32


def _corrupt(what: str) -> BlockCorrupt:
    return BlockCorrupt(f"a customer block has {what}")

