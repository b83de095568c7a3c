"""The PENGWIN Task 2 label encoding, defined once; everything else imports it from here.

A label pixel is a bit map: bit ``10 * (category - 1) + fragment`` is set where the ray through the pixel
crosses that fragment. Categories are 1 = SA (sacrum), 2 = LI (left hip), 3 = RI (right hip); fragments are
1..10 per category, fragment 1 being the main (largest) one. Training uses 30 sigmoid channels with
``channel = bit - 1``.
"""

from __future__ import annotations

CATEGORY_NAMES: tuple[str, ...] = ("SA", "LI", "RI")
NUM_CATEGORIES: int = len(CATEGORY_NAMES)
MAX_FRAGMENTS: int = 10
NUM_CHANNELS: int = NUM_CATEGORIES * MAX_FRAGMENTS
IMAGE_SIZE: int = 448
#: the smallest image side the networks take: four 2x poolings must leave the instance norms more than one pixel
MIN_IMAGE_SIZE: int = 32
#: PENGWIN numbers the projections of a CT 0000..0499; from 0250 on they show simulated K-wires and screws
PROJECTIONS_PER_CT: int = 500
FIRST_TOOL_PROJECTION: int = 250

#: post-processing defaults: a fragment pixel has probability above DEFAULT_THRESHOLD, and 8-connected pieces of
#: fewer than DEFAULT_MIN_COMPONENT_SIZE pixels are dropped (the configs' ``threshold`` and ``min_component_size``)
DEFAULT_THRESHOLD: float = 0.5
DEFAULT_MIN_COMPONENT_SIZE: int = 10
#: the main/other formulation keeps each other-fragments component whole unless a split depth is given or chosen on
#: validation (the configs' ``split_depth``; ``custom_transforms.SplitOtherFragments``)
DEFAULT_SPLIT_DEPTH: float = 0.0
#: ... and grows each other fragment from all of its pixels unless a higher seed threshold is given or chosen (the
#: configs' ``seed_threshold``: seeds are the pixels above it, grown over the other mask)
DEFAULT_SEED_THRESHOLD: float = 0.0
#: a training's best model in its checkpoint folder, the file inference and evaluation load by default
BEST_MODEL_FILE: str = "model.pt"
#: the file beside a model's ``model.pt`` holding the post-processing chosen for it on validation images
#: (``bundle/scripts/tuning.py``)
TUNED_POSTPROCESSING_FILE: str = "postprocessing.json"
#: the two-stage recipe's crop of one bone: the square around it grown by BONE_CROP_MARGIN times the image's shorter
#: side, resized to BONE_CROP_SCALE times that side (``custom_transforms.BoneCropd`` in training,
#: ``scripts.inferers.TwoStageInferer`` in inference)
BONE_CROP_MARGIN: float = 0.05
BONE_CROP_SCALE: float = 1.0


def as_number(value: object) -> float:
    """``value`` (a number or its text, as configs and the command line give it) as a float; NaN for anything else,
    booleans included, so that every range check on the result fails."""
    if isinstance(value, bool):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def check_threshold(value: float | str, name: str = "threshold") -> float:
    """``value`` as a probability threshold; it must be a number strictly between 0 and 1. ``name``: the setting
    the error names."""
    threshold = as_number(value)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"{name} must be a probability strictly between 0 and 1, got {value!r}")
    return threshold


def check_min_component_size(value: int | str) -> int:
    """``value`` as a minimum component size in pixels; it must be a whole number, 0 or more."""
    size = as_number(value)
    if not (size >= 0 and size.is_integer()):
        raise ValueError(f"min_component_size must be a whole number of pixels, 0 or more, got {value!r}")
    return int(size)


def check_seed_threshold(value: float | str) -> float:
    """``value`` as a seed threshold; it must be a number from 0 (every pixel a seed) to below 1."""
    threshold = as_number(value)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"seed_threshold must be a probability from 0 to below 1, got {value!r}")
    return threshold


def check_split_depth(value: float | str) -> float:
    """``value`` as a split depth in pixels; it must be a number, 0 or more."""
    depth = as_number(value)
    if not depth >= 0.0:
        raise ValueError(f"split_depth must be a number of pixels, 0 or more, got {value!r}")
    return depth


#: every bit a PENGWIN label may carry (bits 1..30; never bit 0 or 31)
VALID_BITS_MASK: int = sum(1 << bit for bit in range(1, NUM_CHANNELS + 1))


def fragment_bit(category: int, fragment: int) -> int:
    """Bit index of ``fragment`` (1..10) of ``category`` (1..3)."""
    if not 1 <= category <= NUM_CATEGORIES or not 1 <= fragment <= MAX_FRAGMENTS:
        raise ValueError(
            f"category must be 1..{NUM_CATEGORIES} and fragment 1..{MAX_FRAGMENTS}, got {category}, {fragment}"
        )
    return MAX_FRAGMENTS * (category - 1) + fragment


def fragment_channel(category: int, fragment: int) -> int:
    """Channel index (0..29) of ``fragment`` of ``category``: the bit index minus one."""
    return fragment_bit(category, fragment) - 1


def channel_category_fragment(channel: int) -> tuple[int, int]:
    """Inverse of :func:`fragment_channel`: ``(category, fragment)`` of a channel index 0..29."""
    if not 0 <= channel < NUM_CHANNELS:
        raise ValueError(f"channel must be 0..{NUM_CHANNELS - 1}, got {channel}")
    return channel // MAX_FRAGMENTS + 1, channel % MAX_FRAGMENTS + 1


def fragment_name(category: int, fragment: int) -> str:
    """Short display name such as ``"LI-2"``."""
    fragment_bit(category, fragment)
    return f"{CATEGORY_NAMES[category - 1]}-{fragment}"
