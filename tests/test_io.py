"""Exact, validating loading of PENGWIN TIFFs through MONAI's LoadImage."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from monai.transforms import Compose, LoadImaged
from PIL import Image

from custom_transforms import DecodeFragmentBitsd, PengwinTiffReader, read_fragment_label, read_xray_image


def load_pair(image_path, label_path):
    """The loading chain the bundle configs use: one LoadImaged per kind, labels never cast to float."""
    return Compose(
        [
            LoadImaged("image", reader=PengwinTiffReader(), image_only=True, ensure_channel_first=True),
            LoadImaged(
                "label", reader=PengwinTiffReader(label=True), dtype=None, image_only=True, ensure_channel_first=True
            ),
        ]
    )({"image": str(image_path), "label": str(label_path)})


def test_real_xray_reads_as_float32_448_with_documented_range(real_data):
    image = read_xray_image(real_data / "101_0000.tif")
    assert image.dtype == np.float32 and image.shape == (448, 448)
    assert image.min() == pytest.approx(0.247, abs=1e-3) and image.max() == pytest.approx(56.15, abs=1e-2)


def test_label_with_all_thirty_bits_survives_the_config_loader(tmp_path):
    bitmap = np.full((16, 16), 0x7FFFFFFE, np.uint32)  # every bit 1..30: values near 2**30, lost by float32
    bitmap[0, 0] = (1 << 30) | (1 << 1)
    tifffile.imwrite(tmp_path / "label.tif", bitmap)
    tifffile.imwrite(tmp_path / "image.tif", np.linspace(1, 50, 256, dtype=np.float32).reshape(16, 16))
    data = DecodeFragmentBitsd("label")(load_pair(tmp_path / "image.tif", tmp_path / "label.tif"))
    np.testing.assert_array_equal(np.asarray(data["label"].sum(0)), (bitmap == 0x7FFFFFFE) * 28 + 2)
    assert data["label"][:, 0, 0].nonzero().flatten().tolist() == [0, 29]


def test_loader_keeps_numpy_orientation(tmp_path):
    image = np.zeros((32, 48), np.float32) + 50
    image[1, 9] = 0.5
    bitmap = np.zeros((32, 48), np.uint32)
    bitmap[1, 9] = 1 << 11
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "label.tif", bitmap)
    data = load_pair(tmp_path / "image.tif", tmp_path / "label.tif")
    assert data["image"].shape == (1, 32, 48) and data["image"][0, 1, 9] == 0.5
    assert data["label"].shape == (1, 32, 48) and int(data["label"][0, 1, 9]) == 1 << 11


def test_pil_written_int32_labels_read_exactly(tmp_path):
    bitmap = (np.arange(64, dtype=np.int64).reshape(8, 8) << 20).astype(np.int32) & 0x7FFFFFFE
    Image.fromarray(bitmap.astype(np.int32), mode="I").save(tmp_path / "pil.tif")
    np.testing.assert_array_equal(read_fragment_label(tmp_path / "pil.tif"), bitmap)


def write_bytes(path, content: bytes):
    path.write_bytes(content)
    return path


BAD_IMAGES = {
    "not a TIFF": (lambda p: write_bytes(p, b"hello, not an image"), "not a readable TIFF"),
    "truncated": (lambda p: write_bytes(p, _tiff_bytes(np.ones((32, 32), np.float32))[:300]), "not a readable TIFF"),
    "header only": (lambda p: write_bytes(p, _tiff_bytes(np.ones((32, 32), np.float32))[:8]), "not a readable TIFF .no image in it"),
    "several pages": (lambda p: tifffile.imwrite(p, np.ones((2, 8, 8), np.float32)), "2 pages"),
    "RGB": (lambda p: tifffile.imwrite(p, np.ones((8, 8, 3), np.float32), photometric="rgb"), "RGB"),
    "integer image": (lambda p: tifffile.imwrite(p, np.ones((32, 32), np.uint16)), "float raw-intensity"),
    "NaN": (lambda p: tifffile.imwrite(p, np.pad(np.array([[1.0, np.nan]], np.float32), ((0, 31), (0, 30)), constant_values=2.0)), "NaN/inf"),
    "beyond float32": (lambda p: tifffile.imwrite(p, np.linspace(1, 1e300, 1024).reshape(32, 32)), "up to 1e\\+300 overflow float32"),
    "overflowing window": (lambda p: tifffile.imwrite(p, np.linspace(1.5e38, 2e38, 1024, dtype=np.float32).reshape(32, 32)), "overflow float32 in the neg-log window"),
    "constant": (lambda p: tifffile.imwrite(p, np.full((32, 32), 4.0, np.float32)), "constant image"),
    "too small": (lambda p: tifffile.imwrite(p, np.linspace(1, 2, 64, dtype=np.float32).reshape(8, 8)), "8x8 pixels; the networks need at least 32x32"),
    "not positive": (lambda p: tifffile.imwrite(p, np.linspace(-1, 2, 1024, dtype=np.float32).reshape(32, 32)), "raw intensities must be positive"),
}


def _tiff_bytes(array):
    import io

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("compression", ["lzw", "deflate", "zstd"])
def test_compressed_x_rays_read_as_written(tmp_path, compression):
    """Exported X-rays are often compressed; LZW and zstd need imagecodecs (a requirement)."""
    image = np.random.default_rng(0).uniform(0.5, 56.0, (40, 48)).astype(np.float32)
    tifffile.imwrite(tmp_path / "x.tif", image, compression=compression)
    np.testing.assert_array_equal(read_xray_image(tmp_path / "x.tif"), image)


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_fail_naming_the_file_and_the_problem(tmp_path, case):
    make, message = BAD_IMAGES[case]
    path = tmp_path / f"bad_{case.replace(' ', '_')}.tif"
    make(path)
    with pytest.raises(ValueError, match=rf"bad_{case.replace(' ', '_')}\.tif.*{message}"):
        read_xray_image(path)


def test_wrong_shape_is_reported_when_a_shape_is_required(tmp_path):
    tifffile.imwrite(tmp_path / "small.tif", np.linspace(1, 2, 64, dtype=np.float32).reshape(8, 8))
    with pytest.raises(ValueError, match=r"small.tif: expected shape \(448, 448\), got \(8, 8\)"):
        read_xray_image(tmp_path / "small.tif", expected_shape=(448, 448))


def test_missing_file_is_reported_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.tif"):
        read_xray_image(tmp_path / "absent.tif")


@pytest.mark.parametrize(
    "bitmap, message",
    [
        (np.ones((4, 4), np.float32), "integer dtype"),
        (np.ones((4, 4), np.uint32), r"bits \[0\]"),
        (np.full((4, 4), 1 << 31, np.uint32), r"bits \[31\]"),
    ],
)
def test_bad_labels_fail_naming_the_file(tmp_path, bitmap, message):
    tifffile.imwrite(tmp_path / "bad_label.tif", bitmap)
    with pytest.raises(ValueError, match=rf"bad_label\.tif.*{message}"):
        read_fragment_label(tmp_path / "bad_label.tif")


def test_reader_claims_only_tiff_suffixes():
    reader = PengwinTiffReader()
    assert reader.verify_suffix("a/b/001_0000.tif") and reader.verify_suffix(["x.TIFF", "y.tif"])
    assert not reader.verify_suffix("x.nii.gz")


def test_package_names_load_their_modules_on_first_use() -> None:
    """``custom_transforms.X`` works for every exported name and an unknown name is an AttributeError (that the
    plain file functions then load without torch is pinned by the scorer's import test)."""
    import custom_transforms

    for name in custom_transforms.__all__:
        assert getattr(custom_transforms, name) is not None
    assert set(custom_transforms.__all__) <= set(dir(custom_transforms))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchTransform'"):
        custom_transforms.NoSuchTransform  # noqa: B018
