# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The profile table's customer ids by row, and its id index: customer id -> row, as a dict
would map them, without a Python object per customer (core/state.py's ProfileTable holds one
of each).

A dict of ids held some 85 bytes a customer besides its id (an entry, and an int object for a
row past 256); this is open addressing with linear probing over C ints (4 bytes a slot, two
slots a customer or more), which reads the ids from the table's `Ids` (by row), so an id
is held once. Every request looks its customer up, some several times: the probing is C, and
so is a str id's comparison with the key (as a dict's; a key of another type compares as
Python compares it). Slots hold row + 1 (0: empty). Hashes are Python's, which a str caches.

The ids are not a list because the cyclic collector walks every list it tracks on a full pass.
A shard freezes its survivors (cluster/pauses.py), but unfreezes them for one full pass every
10 minutes, and after a bulk load of profiles that list was the one container growing with the
customers (a shard host of 250,000 held some 111,000 tracked objects, none of them per
customer): a list of 10,000,000 ids alone took some 160 ms of such a pass, a pause of the
shard's event loop. `Ids` holds str (or None), which hold nothing, so the collector need not
see it; and what it holds the collector counts as referenced from outside, so it never frees
one early (a str subclass pointing back at the table would leak, not break). Neither does
RowIndex need it: its one reference is the Ids.
"""
from collections.abc import ItemsView, KeysView, Mapping, ValuesView

cimport cython
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF, Py_XINCREF
from libc.stdint cimport int32_t

cdef extern from *:
    """
    /* A str's hash as the str caches it; another key's from its type. */
    static CYTHON_INLINE Py_hash_t rowindex_hash(PyObject *key) {
        if (PyUnicode_CheckExact(key) && ((PyASCIIObject *)key)->hash != -1)
            return ((PyASCIIObject *)key)->hash;
        return PyObject_Hash(key);
    }

    /* A dict's test of two keys: the same object, or equal ones; two str (ids nearly
       always) compared here, as a dict does, their cached hashes first, not through
       rich comparison's dispatch. */
    static CYTHON_INLINE int rowindex_equal(PyObject *a, PyObject *b) {
        if (a == b)
            return 1;
        if (PyUnicode_CheckExact(a) && PyUnicode_CheckExact(b)) {
            Py_ssize_t n = PyUnicode_GET_LENGTH(a);
            Py_hash_t ha = ((PyASCIIObject *)a)->hash, hb = ((PyASCIIObject *)b)->hash;
            return (ha == -1 || hb == -1 || ha == hb) && n == PyUnicode_GET_LENGTH(b)
                && PyUnicode_KIND(a) == PyUnicode_KIND(b)
                && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), n * PyUnicode_KIND(a)) == 0;
        }
        Py_INCREF(a);  /* its __eq__ may run Python that drops it from the ids */
        int equal = PyObject_RichCompareBool(a, b, Py_EQ);
        Py_DECREF(a);
        return equal;
    }
    """
    Py_hash_t rowindex_hash(object key) except? -1
    int rowindex_equal(PyObject *a, PyObject *b) except -1

# the slots are at most this full: linear probing looks at 1.5 slots a hit, 2.5 a miss
cdef double INDEX_LOAD = 0.5


@cython.final
@cython.no_gc
cdef class Ids:
    """Customer ids by row (None: a row no customer holds now), as a list of them reads,
    grown by `append`. Holds only str, untracked by the cyclic collector (see above)."""

    cdef PyObject **_items
    cdef Py_ssize_t _len, _cap

    def __dealloc__(self):
        cdef Py_ssize_t row
        for row in range(self._len):
            Py_XDECREF(self._items[row])
        PyMem_Free(self._items)

    cdef inline PyObject *at(self, Py_ssize_t row):
        """The id of `row` (< len), borrowed: NULL for None."""
        return self._items[row]

    cdef Py_ssize_t _row(self, Py_ssize_t row) except -1:
        if row < 0:
            row += self._len
        if not 0 <= row < self._len:
            raise IndexError("row out of range")
        return row

    def append(self, customer_id) -> None:
        cdef PyObject **grown
        cdef Py_ssize_t cap
        _checked(customer_id)
        if self._len == self._cap:
            cap = self._cap + (self._cap >> 3) + 16  # as a list grows
            grown = <PyObject **>PyMem_Realloc(self._items, cap * sizeof(PyObject *))
            if grown is NULL:
                raise MemoryError()
            self._items, self._cap = grown, cap
        self._items[self._len] = _held(customer_id)
        self._len += 1

    def __setitem__(self, Py_ssize_t row, customer_id) -> None:
        _checked(customer_id)
        row = self._row(row)
        cdef PyObject *old = self._items[row]
        self._items[row] = _held(customer_id)
        Py_XDECREF(old)

    cdef object _get(self, Py_ssize_t row):
        cdef PyObject *item = self._items[row]
        return None if item is NULL else <object>item

    def __getitem__(self, at):
        if isinstance(at, slice):
            return [self._get(row) for row in range(*at.indices(self._len))]
        return self._get(self._row(at))

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        return _IdsWalk(self)

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + self._cap * sizeof(PyObject *)


@cython.final
cdef class _IdsWalk:
    """An iterator over `Ids` as a list's reads: re-reading the length at each step, so rows
    appended while it walks are walked too (a generator took a frame switch a row)."""

    cdef Ids _ids
    cdef Py_ssize_t _row

    def __cinit__(self, Ids ids not None):
        self._ids = ids

    def __iter__(self):
        return self

    def __next__(self):
        if self._row >= self._ids._len:
            raise StopIteration
        self._row += 1
        return self._ids._get(self._row - 1)


cdef inline int _checked(customer_id) except -1:
    if customer_id is not None and not isinstance(customer_id, str):
        raise TypeError(f"a customer id is a str, not {type(customer_id).__name__}")
    return 0


cdef inline PyObject *_held(customer_id):
    """A new reference to the id, NULL for None."""
    if customer_id is None:
        return NULL
    cdef PyObject *item = <PyObject *>customer_id
    Py_XINCREF(item)
    return item


@cython.final
@cython.no_gc
cdef class RowIndex:
    """Customer id -> row over the table's `ids`: `slots` (a power of two) to start with."""

    cdef Ids _ids
    cdef int32_t *_slots
    cdef Py_ssize_t _size, _mask, _count

    def __cinit__(self, Ids ids not None, Py_ssize_t slots):
        if slots < 2 or slots & (slots - 1):
            raise ValueError(f"slots must be a power of two, got {slots}")
        self._ids = ids
        self._slots = <int32_t *>PyMem_Calloc(slots, sizeof(int32_t))
        if self._slots is NULL:
            raise MemoryError()
        self._size, self._mask = slots, slots - 1

    def __dealloc__(self):
        PyMem_Free(self._slots)

    cdef PyObject *_id(self, Py_ssize_t row) except NULL:
        """The id of a row the index holds, borrowed; a row with none is a bug, not a crash."""
        if not 0 <= row < self._ids._len or self._ids.at(row) is NULL:
            raise RuntimeError(f"row {row} of the id index has no id")
        return self._ids.at(row)

    cdef Py_ssize_t _find(self, object key) except? -1:
        """The slot of `key`'s row, or of the empty slot that ends its probe (negative: ~it)."""
        cdef Py_ssize_t at = rowindex_hash(key) & self._mask
        cdef int32_t row
        while True:
            row = self._slots[at]
            if not row:
                return ~at
            if rowindex_equal(self._id(row - 1), <PyObject *>key):
                return at
            at = (at + 1) & self._mask

    cdef int _put(self, Py_ssize_t at, int32_t row) except -1:
        """Put `row` in the first free slot from `at` on."""
        cdef Py_ssize_t probed = 0
        while self._slots[at]:
            probed += 1
            if probed == self._size:  # more ids than slots: a bug, not a hang
                raise RuntimeError(f"the id index has no free slot for row {row}")
            at = (at + 1) & self._mask
        self._slots[at] = row + 1
        return 0

    cdef int _resize(self, Py_ssize_t size) except -1:
        """Move to `size` slots, placing every row with an id."""
        cdef int32_t *grown = <int32_t *>PyMem_Calloc(size, sizeof(int32_t))
        cdef Py_ssize_t row
        if grown is NULL:
            raise MemoryError()
        PyMem_Free(self._slots)
        self._slots, self._size, self._mask = grown, size, size - 1
        for row in range(self._ids._len):
            if self._ids.at(row) is not NULL:
                self._put(rowindex_hash(<object>self._id(row)) & self._mask, <int32_t>row)
        return 0

    def get(self, key, default=None):
        cdef Py_ssize_t at = self._find(key)
        return self._slots[at] - 1 if at >= 0 else default

    def __getitem__(self, key) -> int:
        cdef Py_ssize_t at = self._find(key)
        if at < 0:
            raise KeyError(key)
        return self._slots[at] - 1

    def __contains__(self, key) -> bool:
        return self._find(key) >= 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        return (c for c in self._ids if c is not None)

    def keys(self) -> KeysView:
        return KeysView(self)

    def items(self) -> ItemsView:
        return ItemsView(self)

    def values(self) -> ValuesView:
        return ValuesView(self)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + self._size * sizeof(int32_t)

    def add(self, Py_ssize_t row) -> None:
        """Index the row under its id in `ids` (an id not indexed yet)."""
        self._id(row)  # a row with an id, before it counts
        self._count += 1
        if self._count > self._size * INDEX_LOAD:
            self._resize(self._size * 2)  # which places every row with an id: this one
        else:
            self._put(rowindex_hash(<object>self._id(row)) & self._mask, <int32_t>row)

    def pop(self, key) -> int:
        """Unindex `key`, its row; KeyError if not indexed. The rows after it in its run move
        back where their probe would stop short of them (backward shift: no tombstones)."""
        cdef Py_ssize_t gap = self._find(key), at, home
        cdef int32_t row, found
        if gap < 0:
            raise KeyError(key)
        found = self._slots[gap] - 1
        at = gap
        while True:
            at = (at + 1) & self._mask
            row = self._slots[at]
            if not row:
                break
            home = rowindex_hash(<object>self._id(row - 1)) & self._mask
            # stays unless the gap lies cyclically between its home slot and where it is
            if (at - home) & self._mask >= (at - gap) & self._mask:
                self._slots[gap] = row
                gap = at
        self._slots[gap] = 0
        self._count -= 1
        return found


Mapping.register(RowIndex)
