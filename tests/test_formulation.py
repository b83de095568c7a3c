"""The main/other formulation: 30 fragment channels to 6 main/other (or 9 main/other/rim) channels and back."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch
from monai.data import MetaTensor

from custom_transforms import (
    MAIN_OTHER_CHANNELS,
    MAIN_OTHER_RIM_CHANNELS,
    FragmentSizeWeights,
    FragmentSizeWeightsd,
    MainOtherFragments,
    MainOtherFragmentsd,
    SplitOtherFragments,
    SplitOtherFragmentsd,
    fragment_channel,
    fragment_cores,
)
from helpers import REPO_ROOT, write_pair


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


def _touching_others() -> torch.Tensor:
    """LI: a main fragment, fragments 2 and 3 side by side (columns 2..9 and 10..17 of rows 5..14), and an isolated
    fragment 4 in a corner; RI: fragment 2 overlapping fragment 3's left half."""
    masks = torch.zeros(30, 20, 20, dtype=torch.uint8)
    masks[fragment_channel(2, 1), 16:20, :] = 1
    masks[fragment_channel(2, 2), 5:15, 2:10] = 1
    masks[fragment_channel(2, 3), 5:15, 10:18] = 1
    masks[fragment_channel(2, 4), 0:2, 0:2] = 1
    masks[fragment_channel(3, 2), 5:15, 2:10] = 1
    masks[fragment_channel(3, 3), 5:15, 2:6] = 1
    return masks


def test_seam_target_marks_where_two_other_fragments_meet_and_nothing_else():
    masks = _touching_others()
    plain, seamed = MainOtherFragments()(masks), MainOtherFragments(seam_target=0.25)(masks)
    assert plain.dtype == torch.uint8 and seamed.dtype == torch.float32
    li_other = seamed[3]
    assert torch.all(li_other[5:15, 9:11] == 0.25)  # the last column of fragment 2 and the first of fragment 3
    assert int((li_other == 0.25).sum()) == 20
    assert torch.equal(li_other > 0, plain[3] > 0)  # the same pixels, only their target lowered
    assert torch.equal(seamed[2], plain[2].float())  # main fragments keep their targets
    # RI: fragment 3 lies inside fragment 2: the seam is fragment 3's own pixels next to fragment 2's outside it
    assert torch.equal((seamed[5] == 0.25).nonzero()[:, 1].unique(), torch.tensor([5]))
    assert torch.equal(MainOtherFragments(seam_target=1.0)(masks), plain)


@pytest.mark.parametrize("seam_target", [-0.1, 1.5, "low", True])
def test_seam_target_rejects_values_outside_zero_to_one_in_one_line(seam_target):
    with pytest.raises(ValueError, match="seam_target must be a number from 0 to 1"):
        MainOtherFragmentsd(keys="label", seam_target=seam_target)


@pytest.mark.parametrize("reference_fraction, max_weight", [(0.1, 10.0), (0.05, 3.0)])
def test_size_weights_grow_inversely_with_fragment_area_up_to_the_cap(reference_fraction, max_weight):
    masks = _fragments()  # areas 800 (LI main), 36 (LI 2), 200 (LI 3) and 100 (SA main) of 1600 pixels
    weights = FragmentSizeWeights(reference_fraction, max_weight)(masks)
    reference = reference_fraction * 1600
    assert weights.shape == (1, 40, 40) and weights.dtype == torch.float32
    for (row, col), area in {(0, 0): 800, (25, 3): 36, (35, 30): 200}.items():
        assert weights[0, row, col] == pytest.approx(min(max(reference / area, 1.0), max_weight))
    assert weights[0, 10, 10] == pytest.approx(min(max(reference / 100, 1.0), max_weight))  # largest of two
    assert weights[0, 22, 0] == 1.0  # background


def test_size_weights_dictionary_twin_writes_its_own_key_and_rejects_bad_settings():
    data = FragmentSizeWeightsd(keys="label", weight_keys="weight")({"label": _fragments()})
    torch.testing.assert_close(data["label"], _fragments())
    torch.testing.assert_close(data["weight"], FragmentSizeWeights()(_fragments()))
    with pytest.raises(ValueError, match="max_weight must be at least 1, got 0.5"):
        FragmentSizeWeights(max_weight=0.5)
    with pytest.raises(ValueError, match="reference_fraction must be in"):
        FragmentSizeWeights(reference_fraction=0)
    with pytest.raises(ValueError, match="30 fragment channels"):
        FragmentSizeWeights()(torch.zeros(6, 4, 4))


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


def _dumbbell(neck_width: int) -> torch.Tensor:
    """Main/other probabilities whose RI other-fragments mask is two 16 x 16 squares joined by a neck."""
    probs = torch.zeros(MAIN_OTHER_CHANNELS, 40, 48)
    probs[5, 10:26, 4:20] = 0.9
    probs[5, 10:26, 28:44] = 0.9
    probs[5, 18 - neck_width // 2 : 18 + (neck_width + 1) // 2, 20:28] = 0.9
    return probs


@pytest.mark.parametrize(
    "neck_width, split_depth, pieces",
    [(2, 0.0, 1), (2, 1.0, 2), (2, 3.0, 2), (6, 4.0, 2), (6, 5.0, 1), (16, 1.0, 1)],
)
def test_split_depth_cuts_components_at_necks_narrower_than_both_sides(neck_width, split_depth, pieces):
    """The squares' inscribed radius is 8 px: a neck splits them when its half-width is smaller by more than
    ``split_depth`` (a 6 px neck: 8 - 3 = 5); a neck as wide as the squares (one 16 x 40 bar) is no neck."""
    split = SplitOtherFragments(0.5, 1, split_depth=split_depth)(_dumbbell(neck_width)) > 0.5
    ri_others = split[fragment_channel(3, 2) : fragment_channel(3, 10) + 1]
    assert int(ri_others.flatten(1).any(1).sum()) == pieces
    assert torch.equal(ri_others.any(0), _dumbbell(neck_width)[5] > 0.5)  # a partition: no pixel lost or shared
    assert int(ri_others.sum()) == int((_dumbbell(neck_width)[5] > 0.5).sum())


def test_split_depth_keeps_small_components_without_a_deep_maximum_whole():
    probs = torch.zeros(MAIN_OTHER_CHANNELS, 20, 20)
    probs[1, 2:4, 2:12] = 0.9  # a 2-pixel-wide bar: its inscribed radius 1 is below the split depth
    probs[1, 8:10, 8:10] = 0.9
    split = SplitOtherFragments(0.5, 1, split_depth=3.0)(probs) > 0.5
    assert [int(split[fragment_channel(1, k)].sum()) for k in (2, 3, 4)] == [20, 4, 0]


def _two_cores_and_a_loose_piece() -> torch.Tensor:
    """Main/other probabilities whose LI other mask is one 12 x 30 bar: two confident ends (0.95) joined by a
    middle the network doubts (0.7), no neck between them; plus a separate doubtful 4 x 4 piece (0.7)."""
    probs = torch.zeros(MAIN_OTHER_CHANNELS, 30, 40)
    probs[3, 4:16, 4:34] = 0.7
    probs[3, 4:16, 4:14] = 0.95
    probs[3, 4:16, 24:34] = 0.95
    probs[3, 22:26, 30:34] = 0.7
    return probs


@pytest.mark.parametrize(
    "seed_threshold, split_depth, areas",
    [
        (0.0, 0.0, [360, 16, 0]),  # plain components: the bar is one fragment
        (0.5, 1.0, [360, 16, 0]),  # a seed threshold at or below the threshold changes nothing
        (0.9, 0.0, [180, 180, 16]),  # seeds at the two ends: the bar parts in its middle; the piece stays
        (0.9, 1.0, [180, 180, 16]),
    ],
)
def test_seed_threshold_grows_confident_cores_over_the_other_mask(seed_threshold, split_depth, areas):
    """Seeds are the components of the pixels above ``seed_threshold``; a watershed of the probability grows them
    over the whole other mask, and a part of the mask without a seed is a fragment of its own."""
    probs = _two_cores_and_a_loose_piece()
    split = SplitOtherFragments(0.5, 1, split_depth=split_depth, seed_threshold=seed_threshold)(probs) > 0.5
    li_others = split[fragment_channel(2, 2) : fragment_channel(2, 10) + 1]
    assert [int(mask.sum()) for mask in li_others[:3]] == areas
    assert torch.equal(li_others.any(0), probs[3] > 0.5)  # a partition of the other mask
    assert int(li_others.sum()) == int((probs[3] > 0.5).sum())


@pytest.mark.parametrize("seed_threshold", [0.0, 0.9])
def test_seeded_splitters_differing_only_in_minimum_size_share_their_labels(seed_threshold):
    probs = _two_cores_and_a_loose_piece()
    labels = SplitOtherFragments(0.5, 0, split_depth=1.0, seed_threshold=seed_threshold).label_others(probs)
    for size in (0, 17, 1000):
        splitter = SplitOtherFragments(0.5, size, split_depth=1.0, seed_threshold=seed_threshold)
        assert torch.equal(splitter(probs, labels), splitter(probs))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seed_threshold": 1.0}, "seed_threshold must be a probability from 0 to below 1, got 1.0"),
        ({"seed_threshold": -0.1}, "seed_threshold must be a probability from 0 to below 1"),
        ({"seed_threshold": "high"}, "seed_threshold must be a probability"),
        ({"seed_threshold": 0.9, "rims": True}, "seed_threshold must be 0 with rims"),
        ({"split_depth": -1}, "split_depth must be a number of pixels, 0 or more, got -1"),
        ({"split_depth": "deep"}, "split_depth must be a number of pixels"),
        ({"split_depth": 2, "rims": True}, "split_depth must be 0 with rims"),
    ],
)
def test_split_depth_and_seed_threshold_reject_bad_values_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SplitOtherFragments(0.5, 1, **kwargs)


@pytest.mark.parametrize("split_depth", [0.0, 1.0])
def test_splitters_differing_only_in_minimum_size_share_their_labels(split_depth):
    probs = _dumbbell(2)
    probs[1] = MainOtherFragments()(_fragments(shape=(40, 48)))[3]  # LI's two other fragments, as SA's
    labels = SplitOtherFragments(0.5, 0, split_depth=split_depth).label_others(probs)
    for size in (0, 37, 1000):
        splitter = SplitOtherFragments(0.5, size, split_depth=split_depth)
        assert torch.equal(splitter(probs, labels), splitter(probs))


def test_labels_of_another_image_are_a_clear_error():
    labels = SplitOtherFragments(0.5, 0).label_others(torch.zeros(MAIN_OTHER_CHANNELS, 20, 20))
    with pytest.raises(ValueError, match=r"labels must be one \(40, 48\) map per bone"):
        SplitOtherFragments(0.5, 0)(_dumbbell(2), labels)
    with pytest.raises(ValueError, match="labels must be one"):
        SplitOtherFragments(0.5, 0)(_dumbbell(2), labels[:2])


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
    with pytest.raises(ValueError, match=r"expected 6 channels \(main/other per bone\)"):
        SplitOtherFragments()(np.zeros((30, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected 9 channels \(main/other/rim per bone\)"):
        SplitOtherFragments(rims=True)(probs)


def _touching_fragments(shape=(40, 40)) -> torch.Tensor:
    """RI: main fragment on top; fragments 2 (left) and 3 (right) share an edge at column 20 below it."""
    masks = torch.zeros(30, *shape)
    masks[fragment_channel(3, 1), :10] = 1
    masks[fragment_channel(3, 2), 20:40, :20] = 1
    masks[fragment_channel(3, 3), 20:40, 20:] = 1
    return masks


def test_rim_is_each_other_fragment_outside_its_core():
    masks = _touching_fragments()
    targets = MainOtherFragmentsd(keys="label", rims=True)({"label": masks})["label"]
    assert targets.shape == (MAIN_OTHER_RIM_CHANNELS, 40, 40)
    ri_main, ri_other, ri_rim = targets[6], targets[7], targets[8]
    torch.testing.assert_close(ri_main, masks[fragment_channel(3, 1)])
    assert ri_other.sum() == 800
    # each 20 x 20 square (the image edge counting as outside) is 10 deep: its core is the 10 x 10 deeper than 5
    cores = (ri_other > 0) & (ri_rim == 0)
    assert cores.sum() == 200 and cores[25:35, 5:15].all() and cores[25:35, 25:35].all()
    assert targets[:6].sum() == 0


def test_a_fragment_one_pixel_wide_is_all_core():
    fragments = np.zeros((2, 12, 24), bool)
    fragments[0, 6, 14:22] = True  # a line: depth 1 everywhere, its largest
    fragments[1, 1:11, 1:11] = True  # a 10 x 10 square: depth 5 at most, core deeper than 2.5
    cores = fragment_cores(fragments)
    assert cores[6, 14:22].all()
    assert cores.sum() == 8 + 6 * 6 and cores[3:9, 3:9].all()


@pytest.mark.parametrize("rims, fragments", [(False, 1), (True, 2)])
def test_rims_split_touching_fragments_that_components_merge(rims, fragments):
    masks = _touching_fragments()
    probs = MainOtherFragments(rims)(masks) * 0.9
    split = SplitOtherFragments(threshold=0.5, min_component_size=1, rims=rims)(probs) > 0.5
    ri_others = split[fragment_channel(3, 2) : fragment_channel(3, 10) + 1]
    assert int(ri_others.flatten(1).any(1).sum()) == fragments
    assert ri_others.sum(0).eq(1).sum() == 800  # every other pixel in exactly one fragment
    if rims:
        left, right = ri_others[0], ri_others[1]  # equal sizes: the order of the two is the labelling order
        assert left[20:40, :20].all() and right[20:40, 20:].all()


def test_rims_keep_an_other_region_that_lies_wholly_in_the_rim():
    probs = torch.zeros(MAIN_OTHER_RIM_CHANNELS, 32, 32)
    probs[1, 4:20, 4:20] = 0.9  # SA other fragment with a seed
    probs[1, 26:28, 4:20] = 0.9  # a thin sliver the network also calls rim
    probs[2, 26:28, 4:20] = 0.8
    split = SplitOtherFragments(threshold=0.5, min_component_size=1, rims=True)(probs) > 0.5
    assert split[fragment_channel(1, 2)].sum() == 256 and split[fragment_channel(1, 3)].sum() == 32
    assert split[fragment_channel(1, 3), 26:28, 4:20].all()


def test_core_seeds_below_the_minimum_size_join_their_neighbours():
    probs = torch.zeros(MAIN_OTHER_RIM_CHANNELS, 32, 32)
    probs[4, 4:28, 4:28] = 0.9  # LI other region
    probs[5, 4:28, 10] = 0.9  # a rim line cutting off a 24 x 6 strip on the left
    probs[5, 4:28, 4:10] = 0.9  # ... whose inside is rim too, except one pixel
    probs[5, 15, 5] = 0.0
    split = SplitOtherFragments(threshold=0.5, min_component_size=2, rims=True)(probs) > 0.5
    li_others = split[fragment_channel(2, 2) : fragment_channel(2, 10) + 1]
    assert li_others[0].sum() == 24 * 24 and li_others[1:].sum() == 0


def test_formulation_benchmark_shows_what_each_formulation_loses_on_touching_fragments(tmp_path):
    label = np.zeros((64, 64), np.uint32)
    label[:32] |= 1 << 1  # SA main fragment
    label[32:, :32] |= 1 << 2  # SA fragments 2 and 3, touching along column 32
    label[32:, 32:] |= 1 << 3
    write_pair(tmp_path, "001_0000.tif", size=64, label=False)
    label_dir = tmp_path / "train" / "output" / "images" / "x-ray"
    label_dir.mkdir(parents=True)
    tifffile.imwrite(label_dir / "001_0000.tif", label)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "formulations.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = dict(re.findall(r"^\| ([a-z/ ]+) \| ([0-9.]+) \|", result.stdout, flags=re.M))
    assert rows["slots"] == "1.000" and rows["main/other/rim"] == "1.000"
    assert float(rows["main/other"]) == pytest.approx((1 + 0.5 + 0.5) / 3, abs=1e-3)  # 2 and 3 merged: IoU 1/2 each
    assert float(rows["bones only"]) == pytest.approx((0.5 + 0.25 + 0.25) / 3, abs=1e-3)
    assert "touching another of their bone: 2 of 2" in result.stdout
