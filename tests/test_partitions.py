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
