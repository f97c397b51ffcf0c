"""Partition streams: every row lands once, in its star range, in written order."""

import numpy as np

from trex import partitions
from trex.photometry import aphot_dtype


def test_partition_streams_hold_every_row_once_whatever_the_star_order(tmp_path):
    rng = np.random.default_rng(5)
    writer = partitions.PartitionWriter(tmp_path, stars_per_part=10, shard="0", napertures=3,
                                         limit=4096)  # small: several flushes
    written = []
    for framekey in range(1, 31):
        rows = np.zeros(25, dtype=aphot_dtype(3))
        rows["star"] = rng.permutation(40)[:25]  # unsorted, across partitions
        rows["aim_001"] = rng.normal(12, 1, 25)
        writer.add("aphot", framekey, rows)
        written += [(framekey, int(s), float(m)) for s, m in zip(rows["star"], rows["aim_001"])]
    writer.flush()
    reader, back = partitions.PartitionReader(), []
    dtype = partitions.stream_dtypes(3)["aphot"]
    for name in partitions.partitions(tmp_path):
        rows, keys, order = reader.read(tmp_path, name, "aphot", dtype)
        star = rows["star"][order]
        assert np.all(np.diff(star) >= 0) and np.all(star // 10 == int(name[1:]))
        for s in np.unique(star):  # each star's rows in the order written
            assert np.all(np.diff(keys[order][star == s]) > 0)
        back += [(int(k), int(s), float(m)) for k, s, m in
                 zip(keys[order], star, rows["aim_001"][order])]
    assert sorted(back) == sorted(written)


def test_reading_some_frames_gives_exactly_their_rows(tmp_path):
    """The night-trends phase reads one night's frames at a time: the blocks of the
    frames asked for, from every shard, and nothing else."""
    rng = np.random.default_rng(8)
    written = []
    for shard in ("0", "1"):
        writer = partitions.PartitionWriter(tmp_path, stars_per_part=100, shard=shard,
                                             napertures=3, limit=2048)
        for framekey in range(1 + int(shard), 41, 2):
            rows = np.zeros(12, dtype=aphot_dtype(3))
            rows["star"] = rng.permutation(60)[:12]
            rows["aim_000"] = rng.normal(12, 1, 12)
            writer.add("aphot", framekey, rows)
            written += [(framekey, int(s), float(m)) for s, m in zip(rows["star"], rows["aim_000"])]
        writer.flush()
    dtype = partitions.stream_dtypes(3)["aphot"]
    wanted = np.array([3, 4, 5, 6, 17, 40])
    rows, keys, order = partitions.PartitionReader().read(tmp_path, "p0000000", "aphot", dtype,
                                                          wanted)
    assert len(rows) == len(keys) == len(order) == 12 * len(wanted)
    star = rows["star"][order]
    assert np.all(np.diff(star) >= 0)
    got = sorted((int(k), int(s), float(m)) for k, s, m in zip(keys, rows["star"], rows["aim_000"]))
    assert got == sorted(w for w in written if w[0] in set(wanted.tolist()))
    assert len(partitions.PartitionReader().read(tmp_path, "p0000000", "aphot", dtype,
                                                 np.array([99]))[0]) == 0
