"""Customer blocks: the state of many customers in a columnar, catalog-independent form.

A shard hands partitions over, passivates customers and (with the durability issue) snapshots
them as blocks. A block names its profile slots, actions and channels and carries its strings
as text, so it loads into a shard whose catalog version or string table differs: columns are
matched by name and meaning, new slots take their defaults, history entries of removed actions
are dropped (a block of the loading catalog's own layout, the usual case, loads column by
column as it is). A slot's meaning is what its catalog says it holds (an attribute's type; a
feature's kind, event, field, half-life, `when` filter and type; int and float are one type
here, and a string's declared values are no part of it, as its text travels): one whose
meaning changed under the same name (a `time_since` become a `count`, an `int` attribute
become a `timestamp`) starts from its default like a new one, rather than reading the old
number as the new kind.
Blocks written before they named meanings are matched by name and "string or not" only.
Encoded with msgpack; NumPy columns travel as raw buffers.

Blocks come back from disk, Redis and other processes: `import_block` writes nothing of one
that block_checks.validate refuses (BlockCorrupt).
"""
from __future__ import annotations

import functools
import hashlib
from typing import Any, NamedTuple, Sequence

import msgpack
import numpy as np

from kairos.cluster.storage.block_checks import (FORMAT, MEANING_BYTES, RING_COLUMNS,
                                                  BlockCorrupt, validate)
from kairos.core.compiler import CLOCK_SLOT, CompiledCatalog
from kairos.core.engine import DecisionEngine
from kairos.core.state import EMPTY, ProfileTable


class _Layout(NamedTuple):
    # a name per slot; the helper slot after a `last` feature or a `from` attribute (the
    # time of its value) is '<name>@time'
    keys: list[str]
    flags: list[bool]  # whether each slot holds a string
    string_slots: list[int]  # the string slots' columns
    meanings: bytes  # each slot's meaning's digest (MEANING_BYTES each)


@functools.lru_cache(maxsize=8)
def _layout(compiled: CompiledCatalog) -> _Layout:
    """The same for every block of a catalog (the decision log exports one per decision), so
    computed once per catalog (kept by identity; a shard holds one or two at a time)."""
    cat = compiled.catalog
    # an int and a float are the same number to rules and predictors: a slot declared one
    # and then the other keeps its values
    kind = {"int": "number", "float": "number"}
    meaning: dict[str, tuple] = {compiled.layout.names[CLOCK_SLOT]: ("clock",)}
    meaning.update({a.name: ("attribute", kind.get(a.type, a.type)) for a in cat.attributes})
    meaning.update({f.name: ("feature", f.kind, f.event, f.field, float(f.half_life_s),
                             # a set: listed in another order, the same filter
                             f.when_field, sorted(set(f.when_values), key=repr),
                             kind.get(f.type, f.type))
                    for f in cat.features})
    keys: list[str] = []
    digests = []
    for name in compiled.layout.names:
        # a `last` feature's or `from` attribute's helper holds the time of its value: it
        # means what its slot does, so the two start over together
        described = meaning[name] if name else (*meaning[keys[-1]], "time")
        keys.append(name if name else f"{keys[-1]}@time")
        digests.append(hashlib.blake2b(msgpack.packb(described),
                                       digest_size=MEANING_BYTES).digest())
    flags = [compiled.layout.types.get(key) == "string" for key in keys]
    return _Layout(keys, flags, np.flatnonzero(flags).tolist(), b"".join(digests))


def export_block(engine: DecisionEngine, customer_ids: Sequence[str],
                 extras: Sequence[Any] | None = None, journal: str | None = None
                 ) -> dict[str, Any]:
    """The customers' rows as a block; `extras` (one msgpack-able value per customer) ride
    along for the shard's own per-customer state, such as armed timers. `journal` names the
    journal whose positions the rows' LSNs are."""
    c, t = engine.compiled, engine.table
    layout = _layout(c)
    if len(customer_ids) == 1:  # copying a slice costs a third of indexing by an array
        row = t.index[customer_ids[0]]
        rows: slice | np.ndarray = slice(row, row + 1)
    else:
        rows = np.fromiter((t.index[i] for i in customer_ids), np.int64, len(customer_ids))
    values = t.values[rows].copy()
    strings = _localize(values, layout.string_slots, c)
    block = {"format": FORMAT, "catalog": c.version, "ids": list(customer_ids),
             "slots": layout.keys, "string_columns": layout.flags,
             "meanings": layout.meanings, "strings": strings,
             "actions": c.action_ids, "channels": c.channel_names, "values": values,
             "ring_head": t.ring_head[rows].copy(), "applied": t.applied[rows].copy(),
             "journal": journal, "lsn": t.lsn[rows].copy(),
             "extras": list(extras) if extras is not None else [None] * len(customer_ids)}
    for name in RING_COLUMNS:
        block[name] = getattr(t, name)[rows].copy()
    return block


def import_block(engine: DecisionEngine, block: dict[str, Any],
                 journal: str | None = None, shard: bool = False) -> list[str]:
    """Load a block's customers into the engine's table (activating them); their ids. Their
    LSNs are kept when the block names `journal`, else they start at 0 (every record of
    `journal` is newer than a copy made under another owner). `shard`: as `validate`."""
    columns = validate(block, shard)  # the integer columns as the table's types
    c, t = engine.compiled, engine.table
    ids = block["ids"]
    if not ids:
        return []
    rows = engine.activate(ids)
    t.values[rows] = _values(c, block)
    _rings(c, block, columns, t, rows)
    t.applied[rows] = columns["applied"]
    t.lsn[rows] = columns["lsn"] if journal is not None and block.get("journal") == journal else 0
    return ids


def _localize(values: np.ndarray, slots: list[int], c: CompiledCatalog) -> list[str]:
    """Turn the string slots' codes of the engine's table into codes into the block's own
    string list (one for every string slot), in place; that list. One customer's few codes
    (the decision log exports a block per decision) are numbered in Python, where np.unique
    would cost more than the rest of the block."""
    if len(values) == 1:
        row, index = values[0], {}
        for col in slots:
            code = float(row[col])
            if code == code:
                row[col] = index.setdefault(code, len(index))
        return [c.strings.text(code) for code in index]
    codes = values[:, slots]
    known = ~np.isnan(codes)
    unique, inverse = np.unique(codes[known], return_inverse=True)
    codes[known] = inverse
    values[:, slots] = codes
    return [c.strings.text(code) for code in unique.tolist()]


def slot_sources(c: CompiledCatalog, block: dict[str, Any]) -> list[tuple[str, int | None]]:
    """Each slot of `c`'s layout and the block's column that holds a value of its meaning,
    matched by name, string or not, and meaning where the block names meanings; None where
    none does: the slot starts from its default (replay warns of those)."""
    keys, flags, _, own = _layout(c)
    where = {key: col for col, key in enumerate(block["slots"])}
    meanings, was_string, n = block.get("meanings"), block["string_columns"], MEANING_BYTES
    return [(key, src if src is not None and bool(was_string[src]) == is_string and (
        meanings is None or meanings[src * n:src * n + n] == own[col * n:col * n + n])
        else None) for col, (key, is_string) in enumerate(zip(keys, flags))
        for src in (where.get(key),)]


def _values(c: CompiledCatalog, block: dict[str, Any]) -> np.ndarray:
    source = np.asarray(block["values"], np.float64)
    keys, flags, string_slots, own = _layout(c)
    meanings = block.get("meanings")
    if block["slots"] == keys and list(block["string_columns"]) == flags and \
            meanings in (None, own):
        # a block of this catalog's layout (the usual case): every column as it is, only the
        # strings recoded, where matching the columns by name would cost a Python step each
        out = source.copy()
        strings = block["strings"]
        for col in string_slots:
            column = out[:, col]
            known = ~np.isnan(column)
            column[known] = [c.strings.intern(strings[int(k)]) for k in column[known].tolist()]
        return out
    out = np.tile(c.layout.defaults, (len(source), 1))
    strings = block["strings"]
    clock = {key: col for col, key in enumerate(block["slots"])}.get(keys[CLOCK_SLOT])
    carried = set()
    for col, ((key, src), is_string) in enumerate(zip(slot_sources(c, block), flags)):
        if src is None:
            if key.endswith("@time") and col - 1 in carried and clock is not None:
                # a value carried without its time (an attribute set `from` an event, stored
                # before it had one): as of the newest event the profile had, so that a late,
                # older event (a stale consent) does not change it
                out[:, col] = source[:, clock]
            continue  # a new slot, or one whose meaning changed: it starts from its default
        carried.add(col)
        column = source[:, src]
        if is_string:
            column = column.copy()
            known = ~np.isnan(column)
            column[known] = [c.strings.intern(strings[int(k)]) for k in column[known].tolist()]
        out[:, col] = column
    return out


def _rings(c: CompiledCatalog, block: dict[str, Any], columns: dict[str, np.ndarray], t,
           rows: np.ndarray) -> None:
    """Write the rings of `columns` (the block's, as the table's types) into `rows`, their
    codes mapped from the block's actions and channels to the catalog's."""
    if block["actions"] == c.action_ids and block["channels"] == c.channel_names and \
            columns["ring_action"].shape[1:] == (c.history_size,):
        _copy_rings(columns, t, rows)  # this catalog's codes and ring size: nothing to map
        return
    action_map = np.array([c.action_index.get(a, EMPTY) for a in block["actions"]] + [EMPTY],
                          np.int16)
    # an empty entry's channel code may be 0 with no channels: it maps to EMPTY too
    channel_map = np.array([c.channel_index.get(ch, EMPTY) for ch in block["channels"]] +
                           [EMPTY], np.int16)
    src_action = columns["ring_action"]
    mapped = action_map[src_action]  # EMPTY (-1) indexes the appended EMPTY
    channels = channel_map[columns["ring_channel"]]
    same_shape = src_action.shape[1] == c.history_size
    lossless = np.all((mapped != EMPTY) == (src_action != EMPTY)) and \
        np.all((channels != EMPTY) | (src_action == EMPTY))
    if same_shape and lossless:
        # an unused entry's channel is 0, as in a fresh row (lossless: a used one has one)
        _copy_rings({**columns, "ring_action": mapped,
                     "ring_channel": np.where(mapped == EMPTY, 0, channels)}, t, rows)
        return
    # Another history size, or entries of actions or channels this catalog lacks: rebuild
    # each ring, oldest entry first, keeping the newest that fit.
    size_in = src_action.shape[1]
    for i, row in enumerate(rows.tolist()):
        head = int(columns["ring_head"][i])
        kept = []
        for k in range(size_in):
            e = (head - 1 - k) % size_in
            if src_action[i, e] == EMPTY:
                break
            if mapped[i, e] != EMPTY and channels[i, e] != EMPTY:
                kept.append(e)
        kept = kept[:c.history_size][::-1]
        t.ring_action[row] = EMPTY
        t.ring_channel[row] = 0
        t.ring_outcome[row] = 0
        t.ring_time[row] = 0
        for j, e in enumerate(kept):
            t.ring_action[row, j] = mapped[i, e]
            t.ring_channel[row, j] = channels[i, e]
            t.ring_outcome[row, j] = columns["ring_outcome"][i, e]
            t.ring_time[row, j] = columns["ring_time"][i, e]
        t.ring_head[row] = len(kept) % c.history_size


def _copy_rings(columns: dict[str, np.ndarray], t, rows: np.ndarray) -> None:
    for name in RING_COLUMNS + ("ring_head",):
        getattr(t, name)[rows] = columns[name]


# -- wire form ---------------------------------------------------------------------------------

def pack(block: dict[str, Any]) -> bytes:
    return msgpack.packb(block, default=_encode_array, use_bin_type=True)


def pack_parts(block: dict[str, Any]) -> list[bytes]:
    """`pack(block)`, byte for byte, in parts whose join is all that is left to do: the data
    of each array among the block's values is a part of its own, copied, not packed. A
    thread joins bytes without holding the GIL, while msgpack holds it to pack them (48.5 MiB
    of the learner's posterior held its event loop some 100 ms)."""
    packer = msgpack.Packer(default=_encode_array, use_bin_type=True)
    parts = [packer.pack_map_header(len(block))]
    for name, value in block.items():
        parts.append(packer.pack(name))
        if not isinstance(value, np.ndarray):
            parts.append(packer.pack(value))
            continue
        data = np.ascontiguousarray(value).tobytes()
        header = packer.pack({"__nd__": value.dtype.str, "shape": list(value.shape),
                              "data": b""})
        parts += [header[:-len(_EMPTY_BIN)], _bin_header(len(data)), data]
    return parts


_EMPTY_BIN = msgpack.packb(b"", use_bin_type=True)


def _bin_header(size: int) -> bytes:
    """msgpack's header of `size` bytes of bin, the shortest of its three."""
    for code, width in ((b"\xc4", 1), (b"\xc5", 2)):
        if size < 1 << 8 * width:
            return code + size.to_bytes(width, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def unpack(data: bytes) -> dict[str, Any]:
    """The value `pack` made; BlockCorrupt for bytes that are not one."""
    try:
        return msgpack.unpackb(data, object_hook=_decode_array, raw=False,
                               strict_map_key=False)
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise BlockCorrupt(f"undecodable block data ({type(exc).__name__}: {exc})") from None


CATALOG_PART = ("format", "catalog", "slots", "string_columns", "meanings", "actions",
                "channels")


def pack_one(engine: DecisionEngine, customer_id: str) -> bytes:
    """`pack(export_block(engine, [customer_id]))`, for the decision log's profile of each
    decision: the same map (its keys in another order: every reader unpacks it into a map),
    packed without building the block: what is the same in every block of the catalog (its slots,
    actions and channels; each array's key, dtype and shape, and its row's length) is packed once
    per catalog, and the customer's row of each array follows it."""
    c, t = engine.compiled, engine.table
    row = t.index[customer_id]
    values = t.values[row:row + 1].copy()
    strings = _localize(values, _layout(c).string_slots, c)
    parts = [_one_head(c), _packb([customer_id]), _STRINGS, _packb(strings)]
    for name, head in _row_heads(c):
        parts += (head, (values if name == "values" else getattr(t, name)[row]).tobytes())
    return b"".join(parts)


ONE_ARRAYS = ("values", "ring_head", "applied", "lsn", *RING_COLUMNS)
_packb = msgpack.Packer(use_bin_type=True).pack
_STRINGS = _packb("strings")


@functools.lru_cache(maxsize=8)
def _one_head(c: CompiledCatalog) -> bytes:
    """A one-customer block's map header, the catalog's pairs, the pairs that are the same for
    every customer (no journal, no extras) and the key of its ids."""
    layout = _layout(c)
    fixed = dict(zip(CATALOG_PART, (FORMAT, c.version, layout.keys, layout.flags,
                                    layout.meanings, c.action_ids, c.channel_names)),
                 journal=None, extras=[None])
    pairs = len(fixed) + 2 + len(ONE_ARRAYS)  # and ids, strings, the arrays
    return b"\xde" + pairs.to_bytes(2, "big") + _packb(fixed)[1:] + _packb("ids")


@functools.lru_cache(maxsize=8)
def _row_heads(c: CompiledCatalog) -> tuple[tuple[str, bytes], ...]:
    """Per array of a one-row block, its name and what precedes its row's bytes (its key and
    `_encode_array`'s map up to them, the bin's header included): the catalog's slots and
    history size fix each array's row (a table of one row has them; some 40 us, once), and
    building these per decision cost some 4.5 us of a pack_one's 11."""
    table = ProfileTable(c, 1)
    heads = []
    for name in ONE_ARRAYS:
        array = getattr(table, name)[:1]
        encoded = _packb({"__nd__": array.dtype.str, "shape": list(array.shape), "data": b""})
        heads.append((name, _packb(name) + encoded[:-len(_EMPTY_BIN)] +
                      _bin_header(array[0].nbytes)))
    return tuple(heads)


def _encode_array(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__nd__": obj.dtype.str, "shape": list(obj.shape),
                "data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} in a customer block")


def _decode_array(obj: dict) -> Any:
    if "__nd__" in obj:
        return np.frombuffer(obj["data"], np.dtype(obj["__nd__"])).reshape(obj["shape"]).copy()
    return obj
