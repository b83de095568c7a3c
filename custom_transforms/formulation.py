"""The main/other formulation: per bone, one main-fragment channel and one channel for all its other fragments.

The 30 PENGWIN channels give every fragment a fixed slot, but the number of a fragment beyond the first (its
rank by size) carries no meaning a network can see, and the official metric matches fragments regardless of
slot. The main/other formulation trains 6 channels (SA-main, SA-other, LI-main, LI-other, RI-main, RI-other)
and turns the other-fragments channel back into fragments 2..10 by its 8-connected components, largest first,
as the PENGWIN 2024 winners did.

Other fragments that touch or overlap in the view merge into one component; decoding cuts components at their
necks (``split_depth``) and, with a ``seed_threshold``, grows the fragments from the network's confident cores,
which come apart where its probability dips between two fragments; a ``seam_target`` below 1 on the pixels where two
other fragments meet teaches it those dips. With ``rims=True`` each bone gets a
third channel, the rim of its other fragments: the pixels of each other fragment outside its core, the core being
the pixels deeper inside the fragment than half its largest inscribed radius (9 channels: main, other, rim per
bone). Decoding then takes the components of the other mask outside the rim, the cores, as seeds and floods the
whole other mask from them over the rim probability (a watershed), so touching fragments come apart between their
cores. A core is far from every edge of its fragment, so two cores stay apart even where the network draws the
edge between two fragments vaguely.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_numpy, convert_to_tensor, ensure_tuple_rep
from scipy import ndimage
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed

from .constants import (
    DEFAULT_MIN_COMPONENT_SIZE,
    DEFAULT_SEED_THRESHOLD,
    DEFAULT_SPLIT_DEPTH,
    DEFAULT_THRESHOLD,
    MAX_FRAGMENTS,
    NUM_CATEGORIES,
    NUM_CHANNELS,
    as_number,
    check_min_component_size,
    check_seed_threshold,
    check_split_depth,
    check_threshold,
)

__all__ = [
    "MAIN_OTHER_CHANNELS",
    "MAIN_OTHER_RIM_CHANNELS",
    "CORE_DEPTH_FRACTION",
    "EIGHT_CONNECTED",
    "fragment_cores",
    "MainOtherFragments",
    "MainOtherFragmentsd",
    "FragmentSizeWeights",
    "FragmentSizeWeightsd",
    "SplitOtherFragments",
    "SplitOtherFragmentsd",
]

#: channels of the main/other formulation: ``2 * (category - 1)`` is the main fragment, ``+ 1`` the others
MAIN_OTHER_CHANNELS: int = 2 * NUM_CATEGORIES
#: channels of the formulation with rims: ``3 * (category - 1)`` main, ``+ 1`` others, ``+ 2`` their rims
MAIN_OTHER_RIM_CHANNELS: int = 3 * NUM_CATEGORIES
#: 8-connectivity in 2D, for every connected-component labelling of fragment masks
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
#: a fragment's core: its pixels deeper inside it than this fraction of its largest inscribed radius
CORE_DEPTH_FRACTION: float = 0.5


def _like(result: torch.Tensor, img: NdarrayOrTensor) -> NdarrayOrTensor:
    if isinstance(img, MetaTensor):
        return MetaTensor(result, meta=img.meta, applied_operations=img.applied_operations)
    return result if isinstance(img, torch.Tensor) else result.numpy()


def fragment_cores(fragments: np.ndarray) -> np.ndarray:
    """The union of the cores of ``[N, H, W]`` boolean fragment masks (see :data:`CORE_DEPTH_FRACTION`).

    A fragment's depth is scipy's exact distance to the nearest pixel outside it, the image edge counting as
    outside, computed on the fragment's bounding box padded by one pixel.
    """
    cores = np.zeros(fragments.shape[1:], dtype=bool)
    for fragment in fragments:
        for box in ndimage.find_objects(fragment.astype(np.uint8)):
            depth = ndimage.distance_transform_edt(np.pad(fragment[box], 1))[1:-1, 1:-1]
            cores[box] |= depth > CORE_DEPTH_FRACTION * depth.max()
    return cores


def _seams(others: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]``: the pixels of each bone's ``[B, K, H, W]`` boolean other fragments that are 8-connected to a
    pixel of another other fragment of the bone outside their own."""
    elsewhere = others.any(1, keepdim=True) & ~others
    flat = elsewhere.flatten(0, 1)[:, None].float()
    near = torch.nn.functional.max_pool2d(flat, 3, stride=1, padding=1).view_as(others) > 0
    return (others & near).any(1)


class MainOtherFragments(Transform):
    """``[30, H, W]`` fragment masks to per bone its fragment 1 and the union of fragments 2..10.

    Args:
        rims: add per bone the rim of its other fragments (``[9, H, W]`` instead of ``[6, H, W]``).
        seam_target: the other-fragments target on the seams where two other fragments of a bone meet (the pixels
            of one that are 8-connected to another's pixels outside it); below 1 it teaches the network to lower its
            probability there, so that seeds above a seed threshold come apart (:class:`SplitOtherFragments`).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, rims: bool = False, seam_target: float = 1.0) -> None:
        self.rims = bool(rims)
        if not 0.0 <= as_number(seam_target) <= 1.0:
            raise ValueError(f"seam_target must be a number from 0 to 1, got {seam_target!r}")
        self.seam_target = float(seam_target)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        masks = convert_to_tensor(img, track_meta=False)
        if masks.shape[0] != NUM_CHANNELS:
            raise ValueError(f"expected {NUM_CHANNELS} fragment channels, got shape {tuple(masks.shape)}")
        bones = masks.reshape(NUM_CATEGORIES, MAX_FRAGMENTS, *masks.shape[1:])
        others = bones[:, 1:]
        targets = [bones[:, 0], others.amax(1)]
        if self.seam_target < 1.0:
            targets[1] = torch.where(_seams(others > 0), self.seam_target, targets[1].float())
        if self.rims:
            cores = torch.from_numpy(np.stack([fragment_cores(bone) for bone in convert_to_numpy(others, dtype=bool)]))
            targets.append((targets[1] > 0) & ~cores.to(targets[1].device))
        dtype = masks.dtype if self.seam_target == 1.0 else torch.float32  # seams need fractional targets
        per_bone = torch.stack([target.to(dtype) for target in targets], dim=1)
        return _like(per_bone.reshape(-1, *masks.shape[1:]), img)


class FragmentSizeWeights(Transform):
    """Per-pixel loss weights ``[1, H, W]`` from ``[30, H, W]`` fragment masks, so that small fragments weigh more.

    The official fracture IoU averages over fragments (a chip counts as much as a main fragment) while a pixel loss
    sums over pixels. Each fragment's pixels weigh ``reference_fraction * H * W / area``, clipped to
    ``[1, max_weight]``: fragments of at least ``reference_fraction`` of the image weigh 1 per pixel, a fragment of a
    tenth of that area 10, so that its pixels together weigh as much as a fragment of the reference area. A pixel of
    several fragments takes the largest weight; background weighs 1.

    Args:
        reference_fraction: the fragment area, as a fraction of the image, below which the weights exceed 1.
        max_weight: the largest weight.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, reference_fraction: float = 0.01, max_weight: float = 10.0) -> None:
        if not 0 < reference_fraction <= 1:
            raise ValueError(f"reference_fraction must be in (0, 1], got {reference_fraction!r}")
        if not max_weight >= 1:
            raise ValueError(f"max_weight must be at least 1, got {max_weight!r}")
        self.reference_fraction = float(reference_fraction)
        self.max_weight = float(max_weight)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        masks = convert_to_tensor(img, track_meta=False)
        if masks.shape[0] != NUM_CHANNELS:
            raise ValueError(f"expected {NUM_CHANNELS} fragment channels, got shape {tuple(masks.shape)}")
        present = masks > 0
        areas = present.flatten(1).sum(1).clamp(min=1).to(torch.float32)
        reference = self.reference_fraction * present[0].numel()
        weights = (reference / areas).clamp(1.0, self.max_weight)
        per_pixel = (present * weights[:, None, None]).amax(0, keepdim=True).clamp(min=1.0)
        return _like(per_pixel, img)


class SplitOtherFragments(Transform):
    """Main/other (optionally rim) probabilities to ``[30, H, W]`` fragment probabilities.

    Fragment 1 of each bone takes the main channel. The other channel's pixels above ``threshold`` are split into
    8-connected components; components smaller than ``min_component_size`` pixels are dropped, the largest nine
    become fragments 2..10 (each keeping its probabilities inside the component, zero elsewhere), and any
    further ones join fragment 10, so that no bone exceeds the ten fragments the bit map can hold. Thresholding
    the result at ``threshold`` gives exactly the split masks, so the 30-channel post-processing, metrics and
    writers apply unchanged.

    With ``split_depth`` above 0, each component is also split at its necks, where touching fragments usually meet:
    scikit-image's watershed of scipy's exact distance to the background, from one marker per regional maximum of
    that distance after maxima no more than ``split_depth`` above their pass to another are levelled (the
    h-maxima transform, by morphological reconstruction). So a neck splits a component when the inscribed radius on
    both sides exceeds the neck's half-width by more than ``split_depth`` pixels; elsewhere the component stays whole.

    With ``seed_threshold`` above ``threshold``, the components (split at necks as above) are taken of the pixels
    above ``seed_threshold`` only: confident cores, which come apart where the network's probability dips between
    two touching fragments. A part of the other mask without any seed becomes its own seed, and scikit-image's
    watershed on the other probability grows the seeds over the whole other mask.

    With ``rims=True`` (9 input channels) the components are seeds taken outside the rims (rim probability at most
    ``threshold``: the fragments' cores); seeds smaller than ``min_component_size`` are dropped, and the seeds grow
    as above, over the rim probability.

    Args:
        threshold: probability above which an other-fragments (or rim) pixel belongs to it.
        min_component_size: smaller components are dropped before the fragments are numbered.
        rims: the input has the rim channel of :class:`MainOtherFragments` with ``rims=True``.
        split_depth: a neck splits a component when its half-width is more than this many pixels below the
            inscribed radius on both sides; 0 keeps components whole. Only without ``rims`` (which split between
            the cores).
        seed_threshold: probability above which an other-fragments pixel seeds a fragment; at or below
            ``threshold`` (the default 0) every pixel of the other mask is a seed. Only without ``rims``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        min_component_size: int = DEFAULT_MIN_COMPONENT_SIZE,
        rims: bool = False,
        split_depth: float = DEFAULT_SPLIT_DEPTH,
        seed_threshold: float = DEFAULT_SEED_THRESHOLD,
    ) -> None:
        self.threshold = check_threshold(threshold)
        self.min_component_size = check_min_component_size(min_component_size)
        self.rims = bool(rims)
        self.split_depth = check_split_depth(split_depth)
        self.seed_threshold = check_seed_threshold(seed_threshold)
        if self.rims and self.split_depth > 0:
            raise ValueError(f"split_depth must be 0 with rims, which split components, got {split_depth!r}")
        if self.rims and self.seed_threshold > 0:
            raise ValueError(f"seed_threshold must be 0 with rims, whose cores are the seeds, got {seed_threshold!r}")

    def _components(self, other: np.ndarray, rim: np.ndarray | None) -> tuple[np.ndarray, int]:
        """Labels of the other fragments of one bone, and the largest label (some below it may be unused)."""
        mask = other > self.threshold
        if rim is None:
            if self.seed_threshold <= self.threshold:
                return self._split(mask)
            seeds, count = self._split(other > self.seed_threshold)
            return self._grow(seeds, count, mask, -other)
        seeds, count = ndimage.label(mask & (rim <= self.threshold), structure=EIGHT_CONNECTED)
        sizes = np.bincount(seeds.ravel(), minlength=count + 1)
        seeds[sizes[seeds] < self.min_component_size] = 0
        return self._grow(seeds, count, mask, rim)

    def _split(self, mask: np.ndarray) -> tuple[np.ndarray, int]:
        """The 8-connected components of ``mask``, split at their necks when ``split_depth`` is above 0."""
        if self.split_depth > 0:
            return self._split_at_necks(mask)
        return ndimage.label(mask, structure=EIGHT_CONNECTED)

    @staticmethod
    def _grow(seeds: np.ndarray, count: int, mask: np.ndarray, landscape: np.ndarray) -> tuple[np.ndarray, int]:
        """``seeds`` (labels up to ``count``) grown over ``mask`` by a watershed of ``landscape``; each part of ``mask``
        without a seed is a seed of its own. Returns the labels and the largest one."""
        unseeded, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
        orphans = np.isin(unseeded, np.unique(unseeded[seeds > 0]), invert=True) & mask
        seeds[orphans] = unseeded[orphans] + count
        return watershed(landscape, seeds, mask=mask), int(seeds.max(initial=0))

    def _split_at_necks(self, mask: np.ndarray) -> tuple[np.ndarray, int]:
        """The components of ``mask`` split at their necks (see ``split_depth``), and the largest label.

        Each component is split on its own bounding box grown by one pixel inside the image (the image edge is not
        the mask's edge), and only when its inscribed radius exceeds ``1 + split_depth``: a neck is at least one
        pixel in half-width, so no narrower component has one.
        """
        components, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        for label, box in enumerate(ndimage.find_objects(components), start=1):
            grown = tuple(slice(max(side.start - 1, 0), side.stop + 1) for side in box)
            inside = components[grown] == label
            radius = ndimage.distance_transform_edt(inside)
            if radius.max() <= 1 + self.split_depth:
                continue
            levelled = reconstruction(radius - self.split_depth, radius)
            markers, found = ndimage.label(local_maxima(levelled, connectivity=2) & inside, structure=EIGHT_CONNECTED)
            if found < 2:
                continue
            pieces = watershed(-radius, markers, mask=inside, connectivity=2)
            # piece 1 keeps the component's label, the others take new ones
            components[grown] = np.where(pieces > 1, pieces + count - 1, components[grown])
            count += found - 1
        return components, count

    @property
    def _per_bone(self) -> int:
        """Input channels per bone: main, other (and rim)."""
        return 3 if self.rims else 2

    def _checked(self, img: NdarrayOrTensor) -> np.ndarray:
        """``img`` as float32 numpy, with the channel count of this formulation."""
        probs = convert_to_numpy(img, dtype=np.float32)
        if probs.shape[0] != self._per_bone * NUM_CATEGORIES:
            names = "main/other/rim" if self.rims else "main/other"
            channels = self._per_bone * NUM_CATEGORIES
            raise ValueError(f"expected {channels} channels ({names} per bone), got shape {probs.shape}")
        return probs

    def _label(self, probs: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """:meth:`label_others` of already checked probabilities."""
        per_bone = self._per_bone
        return [
            self._components(probs[per_bone * bone + 1], probs[per_bone * bone + 2] if self.rims else None)
            for bone in range(NUM_CATEGORIES)
        ]

    def label_others(self, img: NdarrayOrTensor) -> list[tuple[np.ndarray, int]]:
        """Per bone, the labels of its other fragments and the largest label: the costly part of the call.

        Without rims they do not depend on ``min_component_size``, so splitters that differ only in it can
        share them (``labels`` of the call), as the post-processing choice on validation does.
        """
        return self._label(self._checked(img))

    def __call__(
        self, img: NdarrayOrTensor, labels: Sequence[tuple[np.ndarray, int]] | None = None
    ) -> NdarrayOrTensor:
        """
        Args:
            img: the ``[6, H, W]`` (or, with rims, ``[9, H, W]``) probabilities.
            labels: :meth:`label_others` of ``img`` by a splitter with the same threshold, split depth, seed
                threshold and rims (with rims, also the same minimum size); labelled here when not given.
        """
        probs = self._checked(img)
        if labels is None:
            labels = self._label(probs)
        elif len(labels) != NUM_CATEGORIES or any(components.shape != probs.shape[1:] for components, _ in labels):
            shapes = [tuple(components.shape) for components, _ in labels]
            raise ValueError(f"labels must be one {probs.shape[1:]} map per bone (label_others of img), got {shapes}")
        per_bone = self._per_bone
        fragments = np.zeros((NUM_CATEGORIES, MAX_FRAGMENTS, *probs.shape[1:]), dtype=np.float32)
        smallest = max(self.min_component_size, 1)  # labels may skip numbers: a missing one has size 0
        for bone, (components, count) in enumerate(labels):
            fragments[bone, 0] = probs[per_bone * bone]
            sizes = np.bincount(components.ravel(), minlength=count + 1)
            largest_first = np.argsort(-sizes[1:], kind="stable") + 1
            kept = largest_first[sizes[largest_first] >= smallest]
            # each component's slot (0: dropped), filled in one pass over the image instead of one per component
            slot_of = np.zeros(len(sizes), dtype=np.intp)
            slot_of[kept] = np.minimum(np.arange(1, len(kept) + 1), MAX_FRAGMENTS - 1)
            slots = slot_of[components]
            rows, cols = np.nonzero(slots)
            fragments[bone, slots[rows, cols], rows, cols] = probs[per_bone * bone + 1, rows, cols]
        result = torch.from_numpy(fragments.reshape(NUM_CHANNELS, *probs.shape[1:]))
        return _like(result.to(img.device) if isinstance(img, torch.Tensor) else result, img)


class MainOtherFragmentsd(MapTransform):
    """Dictionary twin of :class:`MainOtherFragments`."""

    backend = MainOtherFragments.backend

    def __init__(
        self, keys: KeysCollection, rims: bool = False, seam_target: float = 1.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = MainOtherFragments(rims, seam_target)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class FragmentSizeWeightsd(MapTransform):
    """Dictionary twin of :class:`FragmentSizeWeights`: the weights of ``keys`` go to ``weight_keys``."""

    backend = FragmentSizeWeights.backend

    def __init__(
        self,
        keys: KeysCollection,
        weight_keys: KeysCollection,
        reference_fraction: float = 0.01,
        max_weight: float = 10.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.weight_keys = ensure_tuple_rep(weight_keys, len(self.keys))
        self.weigher = FragmentSizeWeights(reference_fraction, max_weight)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, weight_key in self.key_iterator(d, self.weight_keys):
            d[weight_key] = self.weigher(d[key])
        return d


class SplitOtherFragmentsd(MapTransform):
    """Dictionary twin of :class:`SplitOtherFragments`."""

    backend = SplitOtherFragments.backend

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float = DEFAULT_THRESHOLD,
        min_component_size: int = DEFAULT_MIN_COMPONENT_SIZE,
        rims: bool = False,
        split_depth: float = DEFAULT_SPLIT_DEPTH,
        seed_threshold: float = DEFAULT_SEED_THRESHOLD,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.splitter = SplitOtherFragments(threshold, min_component_size, rims, split_depth, seed_threshold)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.splitter(d[key])
        return d


MainOtherFragmentsD = MainOtherFragmentsDict = MainOtherFragmentsd
FragmentSizeWeightsD = FragmentSizeWeightsDict = FragmentSizeWeightsd
SplitOtherFragmentsD = SplitOtherFragmentsDict = SplitOtherFragmentsd
