"""The astrometric reference: the best good frame of a group."""

import numpy as np
import pytest

from trex.astromref import choose_reference


def quality_table(**changes):
    """Six good frames 101..106 with mediocre numbers; ``changes`` maps framekey -> overrides."""
    table = {"framekey": np.arange(101, 107), "meds": np.full(6, 0.60),
             "medd": np.full(6, 0.05), "medsky": np.full(6, 1000.0),
             "nsources": np.full(6, 3000.0), "frameisok": np.ones(6, bool)}
    for key, values in changes.items():
        i = int(key[1:]) - 101
        for name, value in values.items():
            table[name][i] = value
    return table


def test_choose_reference_picks_the_best_frame():
    sharp_round_dark_rich = {"meds": 0.75, "medd": -0.01, "medsky": 900.0, "nsources": 3500}
    table = quality_table(f104=sharp_round_dark_rich, f102={"meds": 0.70}, f105={"medsky": 950.0})
    assert choose_reference(table) == 104
    # an even better frame that is not ok is never chosen
    table = quality_table(f104=sharp_round_dark_rich, f101={**sharp_round_dark_rich, "meds": 0.9,
                                                            "frameisok": False})
    assert choose_reference(table) == 104
    # NaN numbers disqualify a frame
    nan_but_great = {"meds": 0.9, "medd": 0.0, "medsky": 800.0, "nsources": np.nan}
    table = quality_table(f104=sharp_round_dark_rich, f103=nan_but_great)
    assert choose_reference(table) == 104


def test_choose_reference_ties_go_to_the_sharper_frame_not_the_first():
    # 102 is the sharpest but least round, 105 the reverse: every frame has the same
    # rank sum, and the tie goes to the sharpest frame, wherever it sits
    table = quality_table(f102={"meds": 0.70, "medd": 0.06}, f105={"medd": 0.01, "meds": 0.59})
    assert choose_reference(table) == 102
    table = quality_table(f105={"meds": 0.70, "medd": 0.06}, f102={"medd": 0.01, "meds": 0.59})
    assert choose_reference(table) == 105
    with pytest.raises(ValueError, match="no good frame"):
        choose_reference(quality_table(**{f"f{k}": {"frameisok": False} for k in range(101, 107)}))
