"""The main/other formulation: 30 fragment channels to 6 main/other channels and back through components."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from custom_transforms import (
    MAIN_OTHER_CHANNELS,
    MainOtherFragments,
    MainOtherFragmentsd,
    SplitOtherFragments,
    SplitOtherFragmentsd,
    fragment_channel,
)


def _fragments(shape=(40, 40)) -> torch.Tensor:
    """LI: main fragment in the top half, fragment 2 and 3 as separate squares below; SA: one fragment."""
    masks = torch.zeros(30, *shape)
    masks[fragment_channel(2, 1), :20] = 1
    masks[fragment_channel(2, 2), 24:30, 2:8] = 1
    masks[fragment_channel(2, 3), 30:40, 20:40] = 1
    masks[fragment_channel(1, 1), 5:15, 5:15] = 1
    return masks


def test_main_other_keeps_fragment_one_and_unites_the_rest_per_bone():
    masks = _fragments()
    main_other = MainOtherFragments()(masks)
    assert main_other.shape == (MAIN_OTHER_CHANNELS, 40, 40)
    torch.testing.assert_close(main_other[2], masks[fragment_channel(2, 1)])  # LI main
    torch.testing.assert_close(main_other[3], masks[fragment_channel(2, 2)] + masks[fragment_channel(2, 3)])
    torch.testing.assert_close(main_other[0], masks[fragment_channel(1, 1)])  # SA main
    assert main_other[[1, 4, 5]].sum() == 0  # no other SA fragment, no RI at all


def test_main_other_keeps_metadata_and_rejects_wrong_channel_counts():
    label = MetaTensor(_fragments(), meta={"filename_or_obj": "001_0000.tif"})
    out = MainOtherFragmentsd(keys="label")({"label": label})["label"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "001_0000.tif"
    with pytest.raises(ValueError, match="30 fragment channels"):
        MainOtherFragments()(torch.zeros(6, 4, 4))


def test_split_numbers_other_components_by_size_and_round_trips_the_masks():
    masks = _fragments()
    probs = MainOtherFragments()(masks) * 0.9
    split = SplitOtherFragments(threshold=0.5, min_component_size=1)(probs)
    assert split.shape == (30, 40, 40)
    # fragment 3 (200 px) is larger than fragment 2 (36 px): numbered 2 and 3 by size
    torch.testing.assert_close(split[fragment_channel(2, 2)] > 0.5, masks[fragment_channel(2, 3)] > 0)
    torch.testing.assert_close(split[fragment_channel(2, 3)] > 0.5, masks[fragment_channel(2, 2)] > 0)
    torch.testing.assert_close(split[fragment_channel(2, 1)], probs[2])
    assert split[fragment_channel(2, 2)].max() == pytest.approx(0.9)


@pytest.mark.parametrize("min_component_size, kept", [(36, True), (37, False)])
def test_split_drops_other_components_below_the_minimum_size(min_component_size, kept):
    split = SplitOtherFragments(0.5, min_component_size)(MainOtherFragments()(_fragments()))
    small_square = split[:, 24:30, 2:8]
    assert bool((small_square > 0.5).any()) is kept


def test_split_never_exceeds_ten_fragments_per_bone():
    probs = torch.zeros(MAIN_OTHER_CHANNELS, 64, 64)
    probs[1, ::4, ::4] = 1.0  # 256 isolated SA "other" pixels
    split = SplitOtherFragmentsd(keys="pred", threshold=0.5, min_component_size=1)({"pred": probs})["pred"]
    sa = split[:10] > 0.5
    assert sa[1:9].flatten(1).sum(1).tolist() == [1] * 8  # fragments 2..9: one component each
    assert sa[9].sum() == 256 - 8  # the rest join fragment 10
    assert split[10:].sum() == 0


def test_split_accepts_numpy_and_rejects_thirty_channels():
    probs = MainOtherFragments()(_fragments()).numpy()
    assert isinstance(SplitOtherFragments(min_component_size=1)(probs), np.ndarray)
    with pytest.raises(ValueError, match="6 main/other channels"):
        SplitOtherFragments()(np.zeros((30, 4, 4), np.float32))
