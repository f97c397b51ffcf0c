"""Star-range partition streams: the scratch files the light-curve step goes through.

Every rank appends the light-curve columns of its frames' ``aphot`` and
``iphot`` rows to ``p<part>.s<shard>.<kind>.bin`` (part = star // stars per
partition, shard = the writing process), with the framekey and row count of
each block in a ``.idx`` file beside it (:class:`PartitionWriter`); a
partition is then read back whole, every shard, and grouped by star
(:class:`PartitionReader`).  The rows of a few chosen stars (the TFA
templates) are also copied to the partition ``templates``, so that their
light curves can be built before the others.
Rows keep the byte layout of :func:`stream_dtypes` (native byte order;
scratch only, never kept).
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np

from trex import lcformat
from trex.errors import writing
from trex.flags import PHOT

#: framekey and row count of each block of rows appended to a partition stream
INDEX = np.dtype([("framekey", "i8"), ("nrows", "i8")])
#: the partition number of the template stars' copies
TEMPLATES = -1


@functools.lru_cache(maxsize=8)
def product_dtypes(napertures: int) -> dict[str, np.dtype]:
    """Row dtype of each per-frame product kind the light curves are made of."""
    from trex.diffphot import iphot_dtype
    from trex.photometry import aphot_dtype

    return {"aphot": aphot_dtype(napertures), "iphot": iphot_dtype(napertures)}


@functools.lru_cache(maxsize=8)
def stream_dtypes(napertures: int) -> dict[str, np.dtype]:
    """Row dtype of each kind in the partition streams: the star and the product's
    light-curve columns, in the product's order (so they copy as a few byte runs)."""
    columns = set(lcformat.lc_dtype(napertures).names) | {"star"}
    return {kind: np.dtype([(n, dtype[n]) for n in dtype.names if n in columns])
            for kind, dtype in product_dtypes(napertures).items()}


@functools.lru_cache(maxsize=16)
def _runs(product: np.dtype, stream: np.dtype) -> tuple[tuple[int, int, int], ...]:
    """(product offset, stream offset, length) of the byte runs that copy a product
    row's stream fields (adjacent fields merged: two runs for aphot and iphot)."""
    runs: list[list[int]] = []
    for name in stream.names:
        src, dst, size = product.fields[name][1], stream.fields[name][1], stream[name].itemsize
        if runs and runs[-1][0] + runs[-1][2] == src and runs[-1][1] + runs[-1][2] == dst:
            runs[-1][2] += size
        else:
            runs.append([src, dst, size])
    return tuple(tuple(run) for run in runs)


def row_bytes(napertures: int) -> int:
    """Bytes of one measurement in a partition: a stream row of every product kind
    and its framekey (the unit of the memory bound: a partition holds
    ``PARTITION_ROWS``)."""
    return sum(d.itemsize for d in stream_dtypes(napertures).values()) + INDEX["framekey"].itemsize


def conform(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``rows`` in ``dtype``: the same array when it already is, else a copy with the
    common fields (an older or partial product; missing values NaN, flag MISSING)."""
    if rows.dtype == dtype:
        return rows
    out = np.zeros(len(rows), dtype=dtype)
    for name in dtype.names:
        if name in rows.dtype.names:
            out[name] = rows[name]
        elif dtype[name].kind == "f":
            out[name] = np.nan
        elif name[:3] in ("aiq", "irq"):
            out[name] = PHOT["MISSING"].bit
    return out


class PartitionWriter:
    """Appends the rows of per-frame products to star-range partition streams.

    A stream ``p<part>.r<rank>.<kind>.bin`` holds rows of
    :func:`stream_dtypes` (the product's light-curve columns, copied as a few
    byte runs, no per-value conversion), its ``.idx`` file the framekey and row
    count of each block.  Rows are copied into one staging array of ``limit``
    bytes, reused from flush to flush (its memory is touched once, not once
    per frame), and appended partition by partition when it is full, so a
    frame costs one copy and no file operation of its own.
    """

    def __init__(self, folder: Path, stars_per_part: int, shard: str, napertures: int,
                 limit: int = 64 << 20, extra: np.ndarray | None = None):
        self.folder, self.stars_per_part, self.shard = folder, stars_per_part, shard
        self.extra = None if extra is None or not len(extra) else np.asarray(extra)
        self.dtypes = stream_dtypes(napertures)
        self.staging = np.empty(limit, dtype=np.uint8)  # pages are touched as they fill
        self.used = 0
        # part, kind, framekey, first byte, last byte + 1, rows
        self.blocks: list[tuple[int, str, int, int, int, int]] = []
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, kind: str, framekey: int, rows: np.ndarray) -> None:
        """Queue one frame's product rows (``product_dtypes``, any star order)."""
        if not len(rows):
            return
        if self.extra is not None:
            chosen = np.isin(rows["star"], self.extra)
            if chosen.any():
                self._append(TEMPLATES, kind, framekey, rows[chosen], [0, int(chosen.sum())])
        star = rows["star"]
        first, last = int(star.min()) // self.stars_per_part, int(star.max()) // self.stars_per_part
        if first == last:  # the usual case: one block (its order does not matter)
            cuts = [0, len(rows)]
        else:
            if (star[1:] < star[:-1]).any():
                rows = np.take(rows, np.argsort(star, kind="stable"))
                star = rows["star"]
            part = star // self.stars_per_part
            cuts = [0, *(np.flatnonzero(part[1:] != part[:-1]) + 1).tolist(), len(rows)]
        self._append(None, kind, framekey, rows, cuts)

    def _append(self, part: int | None, kind: str, framekey: int, rows: np.ndarray,
                cuts: list[int]) -> None:
        """Stage ``rows`` cut at ``cuts``, each piece to its star's partition (or ``part``)."""
        star = rows["star"]
        width = self.dtypes[kind].itemsize
        nbytes = len(rows) * width
        if self.used + nbytes > len(self.staging):
            self.flush()
            if nbytes > len(self.staging):
                self.staging = np.empty(nbytes, dtype=np.uint8)
        start = self.used
        source = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), -1)
        target = self.staging[start:start + nbytes].reshape(len(rows), width)
        for src, dst, size in _runs(rows.dtype, self.dtypes[kind]):
            target[:, dst:dst + size] = source[:, src:src + size]
        self.used += nbytes
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            self.blocks.append((int(star[lo]) // self.stars_per_part if part is None else part,
                                kind, framekey, start + lo * width, start + hi * width, hi - lo))

    def flush(self) -> None:
        self.blocks.sort(key=lambda block: block[:2])  # stable: frames stay in order
        for (part, kind), blocks in itertools.groupby(self.blocks, key=lambda b: b[:2]):
            blocks = list(blocks)
            stem = self.folder / f"{partition_name(part)}.s{self.shard}.{kind}"
            index = np.array([(block[2], block[5]) for block in blocks], dtype=INDEX)
            with writing(stem), open(f"{stem}.bin", "ab") as fh:
                fh.writelines(self.staging[block[3]:block[4]].data for block in blocks)
            with writing(stem), open(f"{stem}.idx", "ab") as fh:
                fh.write(index.data)
        self.blocks, self.used = [], 0


def partition_name(part: int) -> str:
    return "templates" if part == TEMPLATES else f"p{part:07d}"


def partitions(folder: Path) -> list[str]:
    """Partition names (``p0000012``) present in a folder (not the templates')."""
    return sorted({p.name.split(".")[0] for p in folder.glob("p*.bin")})


class PartitionReader:
    """Reads partition streams, one partition at a time.

    Rows are read into an array kept from one partition to the next (a
    partition's rows are a view, valid until the next :meth:`read` of the same
    kind), so its memory is touched once per run, not once per partition: on
    the virtual machines measured, first-touch page faults cost as much as the
    sort itself.
    """

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}

    def _buffer(self, name: str, nbytes: int) -> np.ndarray:
        buffer = self.buffers.get(name)
        if buffer is None or len(buffer) < nbytes:
            buffer = self.buffers[name] = np.empty(nbytes, dtype=np.uint8)
        return buffer[:nbytes]

    def read(self, folder: Path, name: str, kind: str, dtype: np.dtype,
             framekeys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, framekey of each row, order) of one product kind of partition
        ``name``, every rank's shard, rows as written; ``order`` is the stable
        permutation that groups them by star (each star's rows stay in the order
        they were written; :func:`merge_star` orders them by time and keeps the
        last row written of a frame).  Rows are not moved here: each star's are
        gathered once, when it is merged.  With ``framekeys``, only the blocks of
        those frames are read (memory: their rows, not the partition's)."""
        shards = sorted(folder.glob(f"{name}.s*.{kind}.bin"))
        spans, keys = [], []
        for path in shards:
            index = np.fromfile(path.with_suffix(".idx"), dtype=INDEX)
            ends = np.cumsum(index["nrows"]) * dtype.itemsize
            starts = ends - index["nrows"] * dtype.itemsize
            take = np.ones(len(index), bool) if framekeys is None else np.isin(
                index["framekey"], framekeys)
            spans.append((path, starts[take], ends[take]))
            keys.append(np.repeat(index["framekey"][take], index["nrows"][take]))
        raw = self._buffer(kind, int(sum(int((e - s).sum()) for _, s, e in spans)))
        at = 0
        for path, starts, ends in spans:
            with open(path, "rb") as fh:
                for start, end in _contiguous(starts, ends):
                    fh.seek(start)
                    fh.readinto(raw[at:at + end - start].data)
                    at += end - start
        rows = raw.view(dtype)
        keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
        return rows, keys, _group_order(rows["star"])


def _contiguous(starts: np.ndarray, ends: np.ndarray) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` with adjacent ones joined (one read each)."""
    if not len(starts):
        return []
    breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
    first = np.r_[0, breaks]
    last = np.r_[breaks - 1, len(starts) - 1]
    return list(zip(starts[first].tolist(), ends[last].tolist()))


def _group_order(star: np.ndarray) -> np.ndarray:
    """The stable permutation that groups rows by star: numpy's radix sort when the
    partition's star range fits 16 bits (3x faster than its merge sort)."""
    if len(star) and int(star.max()) - int(star.min()) < 1 << 16:
        return np.argsort((star - star.min()).astype(np.uint16), kind="stable")
    return np.argsort(star, kind="stable")
