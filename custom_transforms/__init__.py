"""MONAI transforms for PENGWIN X-rays: exact loading, neg-log window, CLAHE and fragment bit coding."""

from .bits import (
    DecodeFragmentBits,
    DecodeFragmentBitsd,
    EncodeFragmentBits,
    EncodeFragmentBitsd,
    decode_fragment_bits,
    encode_fragment_bits,
)
from .constants import (
    CATEGORY_NAMES,
    DEFAULT_MIN_COMPONENT_SIZE,
    DEFAULT_THRESHOLD,
    IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    TUNED_POSTPROCESSING_FILE,
    MAX_FRAGMENTS,
    NUM_CATEGORIES,
    NUM_CHANNELS,
    VALID_BITS_MASK,
    channel_category_fragment,
    fragment_bit,
    fragment_channel,
    fragment_name,
)
from .formulation import (
    MAIN_OTHER_CHANNELS,
    MAIN_OTHER_CONTACT_CHANNELS,
    MainOtherFragments,
    MainOtherFragmentsd,
    SplitOtherFragments,
    SplitOtherFragmentsd,
)
from .intensity import CLAHE, CLAHEd, NegLogWindow, NegLogWindowd
from .spatial import RandSideFlipd, SwapSideChannels, SwapSideChannelsd
from .io import (
    TIFF_SUFFIXES,
    PengwinTiffReader,
    invalid_label_bits,
    list_tiffs,
    read_fragment_label,
    read_xray_image,
    tensor_filename,
    tiff_stem,
    tiffs_by_stem,
)
