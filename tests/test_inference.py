"""Tests for configs/inference.json and scripts.loading: input checks, model formats, writer, summary, CLI runs.

The network is a seeded, randomly initialised BasicUNet with small features: the tests pin the plumbing (files,
names, sizes, formats, failures), not segmentation quality. Two runs go through the ``monai.bundle`` CLI (for the
exit status and the printed summary); everything else calls the pieces in-process.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import BasicUNet
from PIL import Image

from custom_transforms.bits import encode_fragment_bits
from custom_transforms import MAIN_OTHER_CHANNELS, CLAHEd, SplitOtherFragments
from custom_transforms.constants import NUM_CHANNELS, TUNED_POSTPROCESSING_FILE, VALID_BITS_MASK
from custom_transforms.intensity import CLAHE, NegLogWindow
from scripts.flags import as_flag
from scripts.inferers import PengwinInferer, native_cpu_bf16
from scripts.networks import VGG16UNet
from scripts.loading import (
    InputFailure,
    InputScan,
    OnnxRuntimeNetwork,
    OpenVinoNetwork,
    list_inputs,
    load_checkpoint,
    load_network,
    report_failures,
    require_inputs,
)
from scripts.postprocessing import postprocess_fragments
from scripts.tuning import tuned_postprocessing
from scripts.writers import PredictionWriter
from pengwin_xray.atomic import file_sha256
from pengwin_xray.datalist import IMAGE_SUBDIR, LABEL_SUBDIR, build_datalist
from pengwin_xray.metrics import read_fragment_label, score_image
from pengwin_xray.segment import load_segmenter

from helpers import BUNDLE_ROOT, bundle_run, write_pair

CONFIG = BUNDLE_ROOT / "configs" / "inference.json"
TRAIN_CONFIG = BUNDLE_ROOT / "configs" / "train.json"
EVALUATE_CONFIG = BUNDLE_ROOT / "configs" / "evaluate.json"
FEATURES = [8, 8, 16, 32, 64, 8]
SIZE = 64
#: formats agree on probabilities to this absolute tolerance (float32 PyTorch against ONNX Runtime kernels) ...
PROB_TOLERANCE = 1e-4
#: ... and, since thresholding turns a 1e-6 change at 0.5 into a flipped pixel, on bit maps up to this fraction
#: of differing pixels (at least one pixel allowed)
BITMAP_TOLERANCE = 1e-4
GC_INPUT = "/input/images/pelvic-fracture-x-ray"
GC_OUTPUT = "/output/images/pelvic-fracture-x-ray-segmentation"
ZOO_INPUT = "/workspace/data/pengwin/test/input/images/x-ray"
ALL_OUTPUTS = ["tif", "json", "png"]


def small_unet(in_channels: int = 1, seed: int = 0) -> BasicUNet:
    torch.manual_seed(seed)
    network = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=MAIN_OTHER_CHANNELS, features=FEATURES)
    return network.eval()


def raw_xray(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """A raw-intensity float32 X-ray: bright air with a darker, noisy disc (positive values, like PENGWIN)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    disc = (rows - size / 2) ** 2 + (cols - size / 2) ** 2 < (size / 3) ** 2
    return (np.where(disc, 8.0, 50.0) + rng.uniform(0.0, 4.0, (size, size))).astype(np.float32)


def bitmap_of(network: torch.nn.Module, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Main/other probabilities and bit map of one raw image, by the recipe of inference.json (fp32, flip TTA,
    default post-processing: other fragments split into components, threshold, small components dropped)."""
    image = torch.as_tensor(np.asarray(CLAHE()(NegLogWindow()(raw[None]))))[None]
    with torch.no_grad():
        probs = torch.sigmoid(PengwinInferer(cpu_bf16=False, flip_tta=True)(image, network))[0].numpy()
    return probs, encode_fragment_bits(postprocess_fragments(SplitOtherFragments()(probs)).masks)


def allowed_differences(bitmap: np.ndarray) -> int:
    return max(1, math.floor(BITMAP_TOLERANCE * bitmap.size))


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    """A bundle root whose models/ holds one seeded network as model.pt, model.ts and model.onnx."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "models").mkdir()
    network = small_unet()
    torch.save(network.state_dict(), root / "models" / "model.pt")
    torch.jit.script(network).save(str(root / "models" / "model.ts"))
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            torch.zeros(1, 1, SIZE, SIZE),
            str(root / "models" / "model.onnx"),
            dynamo=False,
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes={"image": dynamic, "pred": dynamic},
        )
    return root


def model_paths(root: Path) -> dict[str, str]:
    models = root / "models"
    return {
        "ckpt_path": str(models / "model.pt"),
        "torchscript_path": str(models / "model.ts"),
        "onnx_path": str(models / "model.onnx"),
    }


def models_with_choice(tmp_path: Path, model_root: Path, **choice) -> Path:
    """A copy of ``model_root``'s models with ``choice`` as the post-processing chosen for its model.pt."""
    models = tmp_path / "models"
    shutil.copytree(model_root / "models", models)
    choice["model_sha256"] = file_sha256(models / "model.pt")
    (models / TUNED_POSTPROCESSING_FILE).write_text(json.dumps(choice))
    return models


def run_bundle(*args: str) -> subprocess.CompletedProcess:
    """Run inference.json through the monai.bundle CLI in the bundle folder, with the small test network."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    command += ["--network_def#features", json.dumps(FEATURES), "--num_workers", "0", *args]
    return subprocess.run(command, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- list_inputs


def write_not_a_tiff(path: Path) -> None:
    path.write_text("not an image")


def write_nan_image(path: Path) -> None:
    image = raw_xray()
    image[3, 5] = np.nan
    tifffile.imwrite(path, image)


def write_constant_image(path: Path) -> None:
    tifffile.imwrite(path, np.full((SIZE, SIZE), 7.0, np.float32))


def write_integer_image(path: Path) -> None:
    tifffile.imwrite(path, np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE))


def write_tiny_image(path: Path) -> None:
    tifffile.imwrite(path, raw_xray()[:16, :16])


def write_broken_link(path: Path) -> None:
    path.symlink_to("gone.tif")  # a link whose file was moved or deleted: not an image to skip without a word


def write_negative_image(path: Path) -> None:
    image = raw_xray()
    image[0, 0] = -1.0
    tifffile.imwrite(path, image)


@pytest.mark.parametrize(
    "write_bad, reason",
    [
        (write_not_a_tiff, "not a readable TIFF"),
        (write_nan_image, "NaN/inf"),
        (write_constant_image, "constant image"),
        (write_integer_image, "expected a float raw-intensity image"),
        (write_tiny_image, "image of 16x16 pixels; the networks need at least 32x32"),
        (write_negative_image, "raw intensities must be positive"),
        (write_broken_link, "a link to gone.tif, which does not exist"),
    ],
)
def test_list_inputs_rejects_bad_file_with_its_reason_and_keeps_good_one(tmp_path, write_bad, reason):
    tifffile.imwrite(tmp_path / "good.tif", raw_xray())
    write_bad(tmp_path / "bad.tif")
    scan = list_inputs(tmp_path)
    assert scan.items == [{"image": str(tmp_path / "good.tif"), "filename": str(tmp_path / "good.tif")}]
    assert len(scan.failures) == 1
    assert scan.failures[0].path == str(tmp_path / "bad.tif") and reason in scan.failures[0].reason


@pytest.mark.parametrize("image_size, rejected", [(None, False), ([448, 448], False), ([128, 128], True)])
def test_list_inputs_rejects_an_image_too_narrow_at_the_model_image_size(tmp_path, image_size, rejected):
    """A 448 x 40 view is 128 x 11 once brought to a 128 px model: rejected before the run, not a network crash."""
    narrow = raw_xray(448, seed=2)[:, :40].copy()
    tifffile.imwrite(tmp_path / "narrow.tif", narrow)
    tifffile.imwrite(tmp_path / "good.tif", raw_xray(448))
    scan = list_inputs(tmp_path, image_size=image_size)
    assert [Path(item["image"]).name for item in scan.items] == (["good.tif"] if rejected else ["good.tif", "narrow.tif"])
    reasons = [failure.reason for failure in scan.failures]
    expected = "image of 448x40 pixels is 128x11 at the model's image size (128 pixels on its longer side)"
    assert reasons == ([f"{expected}; the networks need at least 32x32 (--image_size 0 runs it at its own size)"]
                       if rejected else [])  # fmt: skip


def test_segmenter_names_an_array_too_narrow_at_the_model_image_size_in_one_line(tmp_path, model_root):
    models = models_with_choice(tmp_path, model_root, image_size=[128, 128])
    segmenter = load_segmenter(BUNDLE_ROOT, ckpt_dir=str(models), **{"network_def#features": FEATURES})
    with pytest.raises(ValueError, match=r"^image array: image of 448x40 pixels is 128x11 at the model's image size"):
        segmenter.segment(raw_xray(448, seed=2)[:, :40].copy())


def test_list_inputs_takes_tif_and_tiff_of_any_case_sorted_and_names_the_other_files_it_ignores(tmp_path, caplog):
    for name in ("c.TIFF", "a.tif", "b.Tif"):
        tifffile.imwrite(tmp_path / name, raw_xray())
    (tmp_path / "notes.txt").write_text("ignored")
    tifffile.imwrite(tmp_path / "image.png.bak", raw_xray())
    (tmp_path / "nested").mkdir()
    tifffile.imwrite(tmp_path / "nested" / "deep.tif", raw_xray())
    with caplog.at_level(logging.WARNING, logger="scripts.loading"):
        scan = list_inputs(tmp_path)
    assert "2 file(s) without a .tif/.tiff suffix not read: image.png.bak, notes.txt" in caplog.text
    assert [Path(item["image"]).name for item in scan.items] == ["a.tif", "b.Tif", "c.TIFF"]
    assert scan.failures == []


def test_list_inputs_rejects_every_file_of_an_output_name_that_several_take(tmp_path):
    for name in ("x.tif", "x.TIFF", "y.tif"):
        tifffile.imwrite(tmp_path / name, raw_xray())
    scan = list_inputs(tmp_path)
    assert [Path(item["image"]).name for item in scan.items] == ["y.tif"]
    assert scan.failures == [
        InputFailure(str(tmp_path / name), "x.TIFF and x.tif would both be written as x.tif; which one is meant is not known")
        for name in ("x.TIFF", "x.tif")
    ]


def test_list_inputs_takes_the_input_folder_of_each_split_of_a_pengwin_root(pengwin_root):
    for split, name in (("val", "101_0000.tif"), ("test", "102_0000.tif")):
        write_pair(pengwin_root, name, split=split, label=False)
    scan = list_inputs(pengwin_root)
    assert len(scan.items) == 22 and scan.failures == []
    assert {Path(item["image"]).parent.relative_to(pengwin_root).as_posix() for item in scan.items} == {
        f"{split}/input/images/x-ray" for split in ("train", "val", "test")
    }
    assert [item["image"] for item in list_inputs(pengwin_root / "test").items] == [
        str(pengwin_root / "test/input/images/x-ray/102_0000.tif")
    ]  # a split folder given directly


@pytest.mark.parametrize(
    "name, error, message",
    [
        ("missing", FileNotFoundError, "input folder does not exist"),
        ("empty", FileNotFoundError, "no .tif/.tiff files in the input folder, nor in <split>/input/images/x-ray"),
        ("image.tif", NotADirectoryError, "must be a folder"),
    ],
)
def test_list_inputs_fails_clearly_on_missing_empty_or_non_folder(tmp_path, name, error, message):
    folder = tmp_path / name
    if name == "empty":
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here")
    elif name == "image.tif":
        tifffile.imwrite(folder, raw_xray())
    with pytest.raises(error, match=message) as info:
        list_inputs(folder)
    assert str(folder) in str(info.value)


def test_a_run_without_a_usable_input_fails_naming_every_file(tmp_path):
    write_not_a_tiff(tmp_path / "one.tif")
    write_nan_image(tmp_path / "two.tif")
    scan = list_inputs(tmp_path)
    assert scan.items == [] and [Path(failure.path).name for failure in scan.failures] == ["one.tif", "two.tif"]
    with pytest.raises(ValueError, match="none of the 2 input files is usable") as info:
        require_inputs(scan, tmp_path)
    assert "one.tif: not a readable TIFF" in str(info.value) and "two.tif: image contains" in str(info.value)


def test_list_inputs_refuses_output_folder_equal_to_input_folder(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", raw_xray())
    with pytest.raises(ValueError, match="folder of the inputs .* would overwrite them"):
        list_inputs(tmp_path, output_dir=tmp_path / "sub" / "..")


@pytest.mark.parametrize("given", ["root", "split", "x-ray folder"])
@pytest.mark.parametrize("output", [IMAGE_SUBDIR, LABEL_SUBDIR], ids=["x-rays", "labels"])
def test_list_inputs_refuses_the_x_ray_or_label_folder_of_a_pengwin_split_as_output(tmp_path, given, output):
    split = tmp_path / "test"
    (split / IMAGE_SUBDIR).mkdir(parents=True)
    (split / LABEL_SUBDIR).mkdir(parents=True)
    tifffile.imwrite(split / IMAGE_SUBDIR / "001_0000.tif", raw_xray())
    dataset_dir = {"root": tmp_path, "split": split, "x-ray folder": split / IMAGE_SUBDIR}[given]
    what = "inputs" if output == IMAGE_SUBDIR else "ground-truth labels"
    with pytest.raises(ValueError, match=f"output_dir is the folder of the {what}"):
        list_inputs(dataset_dir, output_dir=split / output)
    with pytest.raises(ValueError, match="output_dir is the folder of the inputs"):
        list_inputs(dataset_dir, output_dir=dataset_dir)
    assert len(list_inputs(dataset_dir, output_dir=tmp_path / "out").items) == 1


def test_list_inputs_refuses_the_label_folder_of_another_pengwin_split_as_output(tmp_path):
    tifffile.imwrite(tmp_path / "001_0000.tif", raw_xray())
    labelled = tmp_path / "pengwin" / "train"
    (labelled / IMAGE_SUBDIR).mkdir(parents=True)
    (labelled / LABEL_SUBDIR).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"output_dir is the label folder of the PENGWIN split .*pengwin/train; "):
        list_inputs(tmp_path, output_dir=labelled / LABEL_SUBDIR)
    predictions = tmp_path / "predictions" / "test" / LABEL_SUBDIR  # a PENGWIN-like folder of predictions only
    assert len(list_inputs(tmp_path, output_dir=predictions).items) == 1


def test_a_rerun_removes_its_inputs_earlier_outputs_first_and_refuses_to_replace_another_image(tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(inputs / name, raw_xray())
    scan = list_inputs(inputs, output_dir=out)
    writer = PredictionWriter(out)
    earlier = {out / "a.tif", out / "a.json", out / "b_overlay.png", out / "c.tif"}  # c: an input not in this run
    tifffile.imwrite(out / "a.tif", np.full((8, 8), 2, np.uint32))
    for path in earlier - {out / "a.tif"}:
        path.write_bytes(b"an earlier run's")
    assert set(writer.remove_earlier_outputs(scan)) == earlier - {out / "c.tif"}
    assert sorted(path.name for path in out.iterdir()) == ["c.tif"]  # an interrupted run leaves none of them
    tifffile.imwrite(out / "b.tif", raw_xray())  # an X-ray of the output's name: no earlier output
    (out / "a.json").write_text("{}")
    with pytest.raises(ValueError, match=r"b\.tif: not a bit map of an earlier run .* choose another --output_dir"):
        writer.remove_earlier_outputs(scan)
    assert (out / "a.json").exists()  # nothing deleted when one is refused
    steps = json.loads((BUNDLE_ROOT / "configs" / "inference.json").read_text())["initialize"]
    assert "$@writer.remove_earlier_outputs(@input_scan)" in steps  # before the run starts


# ---------------------------------------------------------------- model formats


@pytest.mark.parametrize("wrap", [False, True], ids=["state_dict", "wrapped_under_model"])
def test_load_network_pt_restores_saved_weights_plain_or_wrapped(tmp_path, wrap):
    source = small_unet(seed=1)
    torch.save({"model": source.state_dict()} if wrap else source.state_dict(), tmp_path / "model.pt")
    network = load_network("pt", small_unet(seed=2), tmp_path / "model.pt", "unused.ts", "unused.onnx")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(network(x), source(x))
    assert not network.training


def basic_unet(out_channels: int, features: list[int] = FEATURES) -> torch.nn.Module:
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=out_channels, features=features)


def vgg16_unet(out_channels: int = MAIN_OTHER_CHANNELS) -> torch.nn.Module:
    return VGG16UNet(in_channels=3, out_channels=out_channels, decoder_channels=(8, 8, 8, 8))


@pytest.mark.parametrize(
    "saved, network, message",
    [
        (lambda: basic_unet(NUM_CHANNELS), small_unet, "it predicts 30 channels, network_def 6: for the checkpoint's "
         "formulation use configs/train_seed.json or configs/train_slots.json"),
        (lambda: basic_unet(9), small_unet, "it predicts 9 channels, network_def 6: .* configs/train_rims.json"),
        (vgg16_unet, small_unet, "it holds a VGG16UNet, network_def is a BasicUNet: merge configs/train_vgg16.json"),
        (small_unet, vgg16_unet, "it holds a BasicUNet, network_def is a VGG16UNet: leave out configs/train_vgg16\\.json"),
        (lambda: basic_unet(6, [8, 4, 8, 16, 32, 4]), small_unet, r"\d+ of another shape \(first: down_1\.\S+\)$"),
    ],
    ids=["slots", "rims", "vgg16_into_basicunet", "basicunet_into_vgg16", "other_widths"],
)  # fmt: skip
def test_load_checkpoint_says_in_one_line_which_config_fits_the_checkpoint(tmp_path, saved, network, message):
    torch.save(saved().state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model\.pt: checkpoint does not fit network_def: " + message) as info:
        load_checkpoint(network(), tmp_path / "model.pt")
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("model_format, file", [("pt", "model.pt"), ("ts", "model.ts"), ("onnx", "model.onnx"),
                                                ("openvino", "model.onnx")])
def test_load_network_fails_clearly_when_the_format_file_is_missing(tmp_path, model_format, file):
    paths = [tmp_path / "model.pt", tmp_path / "model.ts", tmp_path / "model.onnx"]
    with pytest.raises(FileNotFoundError, match=file):
        load_network(model_format, small_unet(), *paths)


def test_load_network_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown model_format 'trt'"):
        load_network("trt", small_unet(), "a", "b", "c")


@pytest.mark.parametrize("model_format", ["ts", "onnx", "openvino"])
def test_an_export_left_from_an_earlier_model_pt_is_refused(model_root, tmp_path, model_format):
    """model.pt trained again after the export: the export would run with the new model's post-processing."""
    root = Path(shutil.copytree(model_root, tmp_path / "bundle"))
    load_network(model_format, small_unet(), **model_paths(root))  # the export of this model.pt loads
    torch.save(small_unet(seed=1).state_dict(), root / "models" / "model.pt")
    stale = r"model\.(ts|onnx): not an export of the model\.pt beside it \(its logits"
    with pytest.raises(ValueError, match=stale) as info:
        load_network(model_format, small_unet(), **model_paths(root))
    assert "\n" not in str(info.value)
    (root / "models" / "model.pt").unlink()  # an export shared alone is not compared
    load_network(model_format, small_unet(), **model_paths(root))


def test_an_export_whose_batch_norms_were_folded_into_its_convolutions_is_accepted(tmp_path):
    """Exporters may fold a batch norm into the convolution before it (the VGG16 U-Net's decoder): weights differ,
    outputs do not."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.BatchNorm2d(6)).eval()
    network[1].running_mean.uniform_(-1, 1)
    network[1].running_var.uniform_(0.5, 2)
    torch.save(network.state_dict(), tmp_path / "model.pt")
    folded = torch.nn.Conv2d(1, 6, 3, padding=1).eval()
    scale = network[1].weight / torch.sqrt(network[1].running_var + network[1].eps)
    with torch.no_grad():
        folded.weight.copy_(network[0].weight * scale[:, None, None, None])
        folded.bias.copy_((network[0].bias - network[1].running_mean) * scale + network[1].bias)
    torch.jit.script(folded).save(str(tmp_path / "model.ts"))
    definition = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.BatchNorm2d(6))
    load_network("ts", definition, tmp_path / "model.pt", tmp_path / "model.ts", tmp_path / "model.onnx")


@pytest.mark.parametrize("model_format", ["onnx", "openvino"])
def test_an_export_of_fixed_input_size_is_compared_at_that_size(tmp_path, model_format):
    network = small_unet()
    torch.save(network.state_dict(), tmp_path / "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, torch.zeros(1, 1, 32, 48), str(tmp_path / "model.onnx"), dynamo=False)
    paths = tmp_path / "model.pt", tmp_path / "model.ts", tmp_path / "model.onnx"
    loaded = load_network(model_format, small_unet(), *paths)  # compared with model.pt at 32 x 48
    assert loaded(torch.zeros(1, 1, 32, 48)).shape == (1, MAIN_OTHER_CHANNELS, 32, 48)


def test_the_fragment_network_of_the_two_stage_recipe_is_refused_alone_from_python(tmp_path, model_root):
    models = models_with_choice(tmp_path, model_root, threshold=0.5, min_component_size=0, two_stage=True)
    with pytest.raises(ValueError, match=r"model\.pt: the fragment network of the two-stage recipe"):
        load_segmenter(BUNDLE_ROOT, ckpt_dir=str(models), **{"network_def#features": FEATURES})


def test_a_device_this_machine_lacks_is_one_line_naming_the_setting_from_python(model_root):
    with pytest.raises(ValueError, match=r"^device 'cuda:99': not a device this machine can use"):
        load_segmenter(BUNDLE_ROOT, device="cuda:99", **model_paths(model_root), **{"network_def#features": FEATURES})


def test_a_damaged_torchscript_file_is_one_line_naming_it(model_root, tmp_path):
    paths = model_paths(model_root)
    damaged = tmp_path / "model.ts"
    damaged.write_bytes(Path(paths["torchscript_path"]).read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model\.ts: not a loadable TorchScript model") as info:
        load_network("ts", small_unet(), paths["ckpt_path"], damaged, paths["onnx_path"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("model_format", ["ts", "onnx", "openvino"])
@pytest.mark.parametrize("shape", [(96, 96), (100, 72)])
def test_exported_format_gives_the_same_probabilities_and_bit_map_as_pt(model_root, model_format, shape):
    raw = raw_xray(112, seed=3)[: shape[0], : shape[1]]  # other sizes than the export's, one not divisible by 16
    reference = load_network("pt", small_unet(seed=9), **model_paths(model_root))
    exported = load_network(model_format, small_unet(seed=9), **model_paths(model_root))
    ref_probs, ref_bitmap = bitmap_of(reference, raw)
    probs, bitmap = bitmap_of(exported, raw)
    np.testing.assert_allclose(probs, ref_probs, atol=PROB_TOLERANCE, rtol=0)
    assert ref_bitmap.any() and np.count_nonzero(bitmap != ref_bitmap) <= allowed_differences(bitmap)


@pytest.mark.parametrize("engine", [OnnxRuntimeNetwork, OpenVinoNetwork])
def test_onnx_network_reports_the_expected_shape_of_a_fixed_size_model(tmp_path, engine):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(small_unet(), torch.zeros(1, 1, 32, 32), str(tmp_path / "fixed.onnx"), dynamo=False)
    network = engine(tmp_path / "fixed.onnx")
    assert network(torch.zeros(1, 1, 32, 32)).shape == (1, MAIN_OTHER_CHANNELS, 32, 32)
    with pytest.raises(ValueError, match=r"fixed\.onnx: the ONNX model takes inputs of shape \[1, 1, 32, 32\]"):
        network(torch.zeros(1, 1, 64, 64))


@pytest.mark.parametrize("engine", [OnnxRuntimeNetwork, OpenVinoNetwork])
def test_onnx_network_names_an_unreadable_model_file(tmp_path, engine):
    (tmp_path / "broken.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"broken\.onnx: not a loadable ONNX model") as info:
        engine(tmp_path / "broken.onnx")
    assert "\n" not in str(info.value)


def test_openvino_format_computes_in_float32_unless_cpu_bf16(model_root):
    """cpu_bf16 switches OpenVINO's precision as it switches the PyTorch formats' autocast; float32 matches pt."""
    image = torch.from_numpy(raw_xray(SIZE, seed=4)[None, None] / 1e3)
    float32 = load_network("openvino", small_unet(), **model_paths(model_root))
    bf16 = load_network("openvino", small_unet(), **model_paths(model_root), cpu_bf16=True)
    expected = load_network("pt", small_unet(), **model_paths(model_root))(image).detach()
    torch.testing.assert_close(float32(image), expected, rtol=0, atol=PROB_TOLERANCE)
    shape = tuple(image.shape)
    assert float32.compiled_for(shape).get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert bf16.compiled_for(shape).get_property("INFERENCE_PRECISION_HINT").get_type_name() == (
        "bf16" if native_cpu_bf16() else "f32"
    )


def test_openvino_network_compiles_each_input_shape_once_and_keeps_the_last_few(model_root):
    """Static-shape kernels per input size: a shape seen again reuses its compiled model; the oldest is dropped."""
    network = OpenVinoNetwork(model_root / "models" / "model.onnx", max_shapes=2)
    sizes = [32, 48, 32, 64]
    outputs = [network(torch.zeros(1, 1, size, size)) for size in sizes]
    assert [tuple(output.shape[2:]) for output in outputs] == [(size, size) for size in sizes]
    assert list(network.requests) == [(1, 1, 32, 32), (1, 1, 64, 64)]
    static = network.compiled_for((1, 1, 64, 64)).input(0).get_partial_shape()
    assert static.is_static and [dim.get_length() for dim in static] == [1, 1, 64, 64]


# ---------------------------------------------------------------- writer and summary


def test_prediction_writer_records_a_failed_item_and_still_writes_the_next(tmp_path):
    good = np.zeros((NUM_CHANNELS, SIZE, SIZE), np.float32)
    good[4, 10:30, 10:30] = 0.9
    bad = good.copy()
    bad[0, 0, 0] = np.nan
    writer = PredictionWriter(tmp_path / "out", outputs=["tif", "json"])
    writer.write(torch.as_tensor(bad), torch.as_tensor(raw_xray()[None]), "/in/first.tif")
    writer.write(torch.as_tensor(good), torch.as_tensor(raw_xray()[None]), "/in/second.tif")
    assert writer.written == ["/in/second.tif"]
    assert len(writer.failures) == 1 and writer.failures[0].path == "/in/first.tif"
    assert "writing outputs failed" in writer.failures[0].reason and "NaN" in writer.failures[0].reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["second.json", "second.tif"]
    assert (tifffile.imread(tmp_path / "out" / "second.tif")[10:30, 10:30] == 1 << 5).all()


def test_outputs_of_inputs_failed_in_this_run_are_removed_and_no_others(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    earlier = ["old.tif", "old.json", "old_overlay.png", "same.tif", "other.tif", "notes.txt"]
    for name in earlier:  # an earlier run's outputs, and a user's file
        (out / name).write_text("earlier")
    probs = np.zeros((NUM_CHANNELS, SIZE, SIZE), np.float32)
    probs[4, 10:30, 10:30] = 0.9
    writer = PredictionWriter(out, outputs=["tif"])
    writer.write(torch.as_tensor(probs), torch.as_tensor(raw_xray()[None]), "/in/same.tif")
    # old.tif was rejected before the run; same.TIFF lost its output name to same.tif, which this run wrote
    failures = [InputFailure("/in/old.tif", "constant image"), InputFailure("/in/same.TIFF", "same output name")]
    removed = writer.remove_failed_outputs(failures)
    assert sorted(path.name for path in removed) == ["old.json", "old.tif", "old_overlay.png"]
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt", "other.tif", "same.tif"]
    assert (tifffile.imread(out / "same.tif")[10:30, 10:30] == 1 << 5).all()  # this run's, kept


def test_an_inputs_earlier_outputs_give_way_to_this_runs_even_of_kinds_not_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("case.tif", "case.json", "case_overlay.png", "other.json"):
        (out / name).write_text("earlier")
    probs = np.zeros((NUM_CHANNELS, SIZE, SIZE), np.float32)
    probs[4, 10:30, 10:30] = 0.9
    PredictionWriter(out, outputs=["tif"]).write(torch.as_tensor(probs), torch.as_tensor(raw_xray()[None]), "/in/case.tif")
    assert sorted(path.name for path in out.iterdir()) == ["case.tif", "other.json"]
    assert (tifffile.imread(out / "case.tif")[10:30, 10:30] == 1 << 5).all()


def test_outputs_of_inputs_not_in_this_run_are_named_in_a_warning_and_kept(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    names = ["a.tif", "a.json", "b.tif", "b.json", "b_overlay.png", "failed.tif", "notes.txt", "_overlay.png"]
    for name in names:
        (out / name).write_text("earlier")
    scan = InputScan([{"image": "/in/a.TIFF", "filename": "/in/a.TIFF"}], [InputFailure("/in/failed.tif", "constant")])
    with caplog.at_level(logging.WARNING, logger="scripts.writers"):
        found = PredictionWriter(out).warn_earlier_outputs(scan)
    assert [path.name for path in found] == ["b.json", "b.tif", "b_overlay.png"]
    assert "3 file(s) named as outputs of inputs not in this run" in caplog.text and "b_overlay.png" in caplog.text
    assert sorted(path.name for path in out.iterdir()) == sorted(names)


@pytest.mark.parametrize("outputs", [[], ["tif", "nii"], "", "tif,nii"])
def test_prediction_writer_rejects_empty_or_unknown_outputs(tmp_path, outputs):
    with pytest.raises(ValueError, match="outputs must be a non-empty subset"):
        PredictionWriter(tmp_path, outputs=outputs)


@pytest.mark.parametrize("outputs, kinds", [("tif", ("tif",)), ("tif, json", ("tif", "json")), (["png"], ("png",))])
def test_prediction_writer_reads_kinds_given_as_command_line_text(tmp_path, outputs, kinds):
    assert PredictionWriter(tmp_path, outputs=outputs).outputs == kinds


def test_report_failures_prints_counts_and_passes_when_nothing_failed(capsys):
    report_failures([], ["a.tif", "b.tif"])
    assert "2 of 2 input(s) processed, 0 failed" in capsys.readouterr().out


def test_report_failures_prints_counts_and_raises_listing_every_failed_file(capsys):
    failures = [InputFailure("/in/x.tif", "not a readable TIFF"), InputFailure("/in/y.tif", "constant image")]
    with pytest.raises(ValueError, match=r"2 of 3 input\(s\) failed \(x.tif, y.tif\)"):
        report_failures(failures, ["/in/a.tif"])
    out = capsys.readouterr().out
    assert "1 of 3 input(s) processed, 2 failed" in out and "/in/x.tif" in out and "/in/y.tif" in out


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), ("true", True), ("False", False), (1, True)])
def test_as_flag_reads_command_line_switches(value, expected):
    assert as_flag(value, "flip_tta") is expected


def test_as_flag_rejects_anything_else_naming_the_setting():
    with pytest.raises(ValueError, match="^flip_tta must be a switch \\(true/false\\), got 'yes please'$"):
        as_flag("yes please", "flip_tta")


# ---------------------------------------------------------------- the config


def parsed(**override) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser.update(override)
    return parser


@pytest.mark.parametrize(
    "override, dataset_dir, output_dir, outputs",
    [
        ({}, ZOO_INPUT, "./eval", ALL_OUTPUTS),
        ({"grand_challenge": "true"}, GC_INPUT, GC_OUTPUT, ["tif"]),
        ({"grand_challenge": True, "output_dir": "/tmp/out"}, GC_INPUT, "/tmp/out", ["tif"]),
        ({"grand_challenge": "false"}, ZOO_INPUT, "./eval", ALL_OUTPUTS),
    ],
    ids=["model_zoo_default", "grand_challenge", "grand_challenge_own_output", "switch_off_as_string"],
)
def test_grand_challenge_switch_sets_container_paths_and_submission_only(override, dataset_dir, output_dir, outputs):
    parser = parsed(**override)
    assert parser.get_parsed_content("dataset_dir") == dataset_dir
    assert parser.get_parsed_content("output_dir") == output_dir
    assert parser.get_parsed_content("outputs") == outputs


@pytest.mark.parametrize(
    "key, config",
    [
        ("network_def", TRAIN_CONFIG), ("image_transforms", TRAIN_CONFIG), ("use_clahe", EVALUATE_CONFIG),
        ("cpu_bf16", EVALUATE_CONFIG), ("flip_tta", EVALUATE_CONFIG), ("fragment_rims", TRAIN_CONFIG),
        ("postprocessing_choice", EVALUATE_CONFIG), ("threshold", EVALUATE_CONFIG),
        ("min_component_size", EVALUATE_CONFIG), ("split_depth", EVALUATE_CONFIG),
        ("seed_threshold", EVALUATE_CONFIG), ("image_size", EVALUATE_CONFIG), ("network_image_size", EVALUATE_CONFIG),
        ("resize_to_image_size", EVALUATE_CONFIG),
    ],
)  # fmt: skip
def test_inference_shares_key_with_train_config_so_overrides_merge_after_either(key, config):
    assert parsed()[key] == ConfigParser.load_config_file(str(config))[key]


@pytest.mark.parametrize("config_files", [["inference.json"], ["train.json", "evaluate.json"]])
def test_inference_and_evaluation_give_the_model_the_input_and_tta_it_was_chosen_with(tmp_path, config_files):
    """A model trained with --use_clahe false --flip_tta false is run without them unless told otherwise."""
    choice = {"threshold": 0.4, "use_clahe": False, "flip_tta": False}
    (tmp_path / TUNED_POSTPROCESSING_FILE).write_text(json.dumps(choice))
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / name) for name in config_files])
    parser.update({"ckpt_dir": str(tmp_path), "ckpt_path": str(tmp_path / "model.pt")})
    transforms = parser.get_parsed_content("image_transforms")
    assert not [transform for transform in transforms if isinstance(transform, CLAHEd)]
    assert parser.get_parsed_content("pipeline_inferer" if "train.json" in config_files else "inferer").flip_tta is False
    parser["use_clahe"] = True  # an explicit override still wins
    transforms = parser.get_parsed_content("image_transforms", lazy=False)
    assert [transform for transform in transforms if isinstance(transform, CLAHEd)]


def test_inference_decodes_with_the_post_processing_chosen_for_the_model(tmp_path):
    (tmp_path / TUNED_POSTPROCESSING_FILE).write_text(
        json.dumps({"threshold": 0.4, "min_component_size": 25, "split_depth": 2.0, "seed_threshold": 0.9})
    )
    splitter = parsed(ckpt_dir=str(tmp_path)).get_parsed_content("fragment_decoding")[0].splitter
    settings = (splitter.threshold, splitter.min_component_size, splitter.split_depth, splitter.seed_threshold)
    assert settings == (0.4, 25, 2.0, 0.9)


def test_inference_runs_the_trained_model_as_evaluation_does_in_float32_on_cpu():
    evaluation = ConfigParser()
    evaluation.read_config([str(TRAIN_CONFIG), str(EVALUATE_CONFIG)])
    model_inferer, inferer = evaluation.get_parsed_content("validate#inferer"), parsed().get_parsed_content("inferer")
    assert vars(inferer) == vars(model_inferer) and inferer.flip_tta and not inferer.cpu_bf16


def test_config_network_follows_model_format(model_root):
    for model_format, kind in (
        ("pt", BasicUNet),
        ("ts", torch.jit.ScriptModule),
        ("onnx", OnnxRuntimeNetwork),
        ("openvino", OpenVinoNetwork),
    ):
        parser = parsed(bundle_root=str(model_root), model_format=model_format, **{"network_def#features": FEATURES})
        assert isinstance(parser.get_parsed_content("network"), kind), model_format


def test_three_channel_resizing_override_merges_and_writes_at_input_size(tmp_path):
    """The shape of the VGG16 override (network_def, inferer#spatial_size, +image_transforms) on this config."""
    torch.save(small_unet(in_channels=3).state_dict(), tmp_path / "three.pt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "case.tif", raw_xray())
    override = {
        "network_def": {"_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 3, "out_channels": MAIN_OTHER_CHANNELS,
                        "features": FEATURES},
        "inferer#spatial_size": [32, 32],
        "+image_transforms": [{"_target_": "RepeatChanneld", "keys": "image", "repeats": 3}],
    }
    override_file = tmp_path / "three_channel.json"
    override_file.write_text(json.dumps(override))
    workflow = ConfigWorkflow(
        config_file=[str(CONFIG), str(override_file)],
        logging_file=False,
        workflow_type="infer",
        dataset_dir=str(inputs),
        output_dir=str(tmp_path / "out"),
        ckpt_path=str(tmp_path / "three.pt"),
        num_workers=0,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    bitmap = tifffile.imread(tmp_path / "out" / "case.tif")
    assert bitmap.shape == (SIZE, SIZE) and bitmap.dtype == np.uint32 and bitmap.any()


def test_segmenter_segments_a_file_and_its_array_as_the_inference_command_writes_them(tmp_path, model_root):
    """The warm API (loaded once from the bundle) and the command give the same bit map; files and arrays alike."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    raw = raw_xray(seed=5)
    tifffile.imwrite(inputs / "case.tif", raw)
    overrides = {"network_def#features": FEATURES, **model_paths(model_root)}
    segmenter = load_segmenter(BUNDLE_ROOT, **overrides)
    from_file, from_array = segmenter.segment(inputs / "case.tif"), segmenter.segment(raw)
    np.testing.assert_array_equal(from_file.bitmap, from_array.bitmap)
    assert from_file.bitmap.shape == raw.shape and from_file.bitmap.dtype == np.uint32 and from_file.bitmap.any()
    assert from_file.masks.shape == from_file.probabilities.shape == (NUM_CHANNELS, SIZE, SIZE)
    np.testing.assert_array_equal(encode_fragment_bits(from_file.masks), from_file.bitmap)

    workflow = ConfigWorkflow(
        config_file=str(CONFIG), logging_file=False, workflow_type="infer", dataset_dir=str(inputs),
        output_dir=str(tmp_path / "out"), num_workers=0, **overrides,
    )  # fmt: skip
    workflow.initialize()
    assert not workflow.check_properties()  # MONAI's inference properties (bundle_root ... evaluator) all present
    workflow.run()
    workflow.finalize()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "case.tif"), from_file.bitmap)


class _InputSizes(torch.nn.Module):
    """Wraps a network and records the spatial size of every input it is called with."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network, self.sizes = network, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[2:]))
        return self.network(x)


@pytest.mark.parametrize(
    "image_size, shape, network_sizes",
    [
        ([32, 32], (SIZE, SIZE), {(32, 32)}),  # an input larger than the validation images: seen at their scale
        ([64, 64], (128, 96), {(64, 48)}),  # the longer side to theirs, the aspect ratio kept
        ([96, 96], (SIZE, SIZE), {(96, 96)}),  # smaller: enlarged
        ([SIZE, SIZE], (SIZE, SIZE), {(SIZE, SIZE)}),  # the same size: as it is
        (None, (SIZE, SIZE), {(SIZE, SIZE)}),  # no size recorded: as it is
    ],
)
def test_inference_runs_the_network_at_the_image_size_the_model_was_chosen_on(
    tmp_path, model_root, image_size, shape, network_sizes
):
    """postprocessing.json's image_size (the validation images') sets the network's scale; outputs keep the input's."""
    models = models_with_choice(tmp_path, model_root, threshold=0.5, min_component_size=0, split_depth=0,
                                seed_threshold=0, image_size=image_size)  # fmt: skip
    segmenter = load_segmenter(BUNDLE_ROOT, ckpt_dir=str(models), **{"network_def#features": FEATURES})
    segmenter.network = spy = _InputSizes(segmenter.network)
    result = segmenter.segment(raw_xray(max(shape), seed=6)[: shape[0], : shape[1]])
    assert set(spy.sizes) == network_sizes and result.bitmap.shape == shape and result.bitmap.any()


def test_inference_of_an_input_at_the_recorded_image_size_is_unchanged(tmp_path, model_root):
    """The resize is a no-op at the validation images' size: the bit map is the one without any image_size."""
    models = models_with_choice(tmp_path, model_root, image_size=[SIZE, SIZE])
    overrides = {"ckpt_dir": str(models), "network_def#features": FEATURES}
    raw = raw_xray(SIZE, seed=8)
    recorded = load_segmenter(BUNDLE_ROOT, **overrides).segment(raw).bitmap
    np.testing.assert_array_equal(recorded, load_segmenter(BUNDLE_ROOT, image_size=0, **overrides).segment(raw).bitmap)


def test_inference_image_size_override_runs_the_network_at_the_input_size(tmp_path, model_root):
    models = models_with_choice(tmp_path, model_root, image_size=[32, 32])
    overrides = {"ckpt_dir": str(models), "network_def#features": FEATURES}
    assert load_segmenter(BUNDLE_ROOT, **overrides).image_preprocessing({"image": torch.ones(1, SIZE, SIZE)})[
        "image"
    ].shape == (1, 32, 32)
    unchanged = load_segmenter(BUNDLE_ROOT, image_size=None, **overrides)
    assert unchanged.image_preprocessing({"image": torch.ones(1, SIZE, SIZE)})["image"].shape == (1, SIZE, SIZE)


def test_load_segmenter_refuses_a_misspelt_override_and_merges_overlays(model_root):
    with pytest.raises(KeyError, match=r"no config id \['model_fromat'\] in inference.json"):
        load_segmenter(BUNDLE_ROOT, model_fromat="onnx")
    overrides = {"network_def#features": FEATURES, **model_paths(model_root)}
    with pytest.raises(ValueError, match="it predicts 6 channels, network_def 9"):  # the overlay was merged
        load_segmenter(BUNDLE_ROOT, ["configs/train_rims.json"], **overrides)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.ones((SIZE, SIZE), np.uint16), "image array: expected a float raw-intensity image"),
        (np.zeros((SIZE, SIZE), np.float32), "image array: raw intensities must be positive"),
        (np.ones((SIZE, SIZE, 3), np.float32), r"image array: RGB/RGBA image"),
    ],
)
def test_segmenter_names_a_bad_array_in_one_line(model_root, array, message):
    segmenter = load_segmenter(BUNDLE_ROOT, **{"network_def#features": FEATURES, **model_paths(model_root)})
    with pytest.raises(ValueError, match=message):
        segmenter.segment(array)


@pytest.mark.parametrize("image, kind", [(b"/data/101_0000.tif", "bytes"), (None, "NoneType"), ([[1.0]], "list")])
def test_segmenter_says_what_it_takes_when_given_neither_a_path_nor_an_array(model_root, image, kind):
    segmenter = load_segmenter(BUNDLE_ROOT, **{"network_def#features": FEATURES, **model_paths(model_root)})
    with pytest.raises(TypeError, match=rf"^image must be a file path \(str or os.PathLike\) or an \[H, W\] array, "
                                        rf"got {kind}$"):
        segmenter.segment(image)


# ---------------------------------------------------------------- end to end through the CLI


@pytest.mark.slow
def test_cli_writes_bitmap_report_and_overlay_for_a_real_xray(tmp_path, real_data, model_root):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(real_data / "101_0000.tif", inputs / "101_0000.tif")
    checkpoint = model_root / "models" / "model.pt"
    result = run_bundle(
        "--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(checkpoint)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 of 1 input(s) processed, 0 failed" in result.stdout
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["101_0000.json", "101_0000.tif", "101_0000_overlay.png"]
    bitmap = tifffile.imread(out / "101_0000.tif")
    assert bitmap.dtype == np.uint32 and bitmap.shape == (448, 448) and bitmap.any()
    assert not (bitmap & ~np.uint32(VALID_BITS_MASK)).any()
    report = json.loads((out / "101_0000.json").read_text())
    assert report["image"] == "101_0000.tif" and report["fragments"]
    decoding = tuned_postprocessing(str(checkpoint))  # the settings the run decoded with, recorded in the report
    recorded = (report["split_depth"], report["seed_threshold"], report["fragment_rims"], report["image_size"])
    assert recorded == (decoding["split_depth"], decoding["seed_threshold"], False, decoding["image_size"])
    model = (report["model_sha256"], report["model_format"], report["flip_tta"], report["cpu_bf16"])
    assert model == (file_sha256(checkpoint), "pt", True, False)
    bits_present = {bit for bit in range(1, NUM_CHANNELS + 1) if (bitmap & np.uint32(1 << bit)).any()}
    assert {entry["bit"] for entry in report["fragments"]} == bits_present
    with Image.open(out / "101_0000_overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size[1] == 448 and overlay.size[0] > 448  # picture and legend


@pytest.mark.slow
@pytest.mark.parametrize("override, network_size", [((), [32, 32]), (("--image_size", "0"), None)])
def test_cli_runs_the_network_at_the_recorded_image_size_unless_told_0(tmp_path, model_root, override, network_size):
    """The command line cannot pass None (monai.bundle run drops it): 0 switches the resize off; reports say which."""
    models = models_with_choice(tmp_path, model_root, image_size=[32, 32])
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "case.tif", raw_xray(SIZE, seed=7))
    result = run_bundle("--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(models),
                        "--outputs", "['json']", *override)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "case.json").read_text())["image_size"] == network_size


@pytest.mark.slow
def test_evaluation_scores_what_inference_writes_for_a_model_of_another_image_size(tmp_path, pengwin_root, model_root):
    """A model validated on 48 px images, evaluated on 32 px data: both bring the images to 48 px, decode there and
    score the probabilities brought back to 32 px (the minimum size at the 48 px scale), so evaluation's official means are those of inference's bit maps."""
    models = models_with_choice(tmp_path, model_root, threshold=0.5, min_component_size=25, split_depth=0.0,
                                seed_threshold=0.0, image_size=[48, 48])  # fmt: skip
    common = ["--dataset_dir", str(pengwin_root), "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "eval"),
              "--network_def#features", json.dumps(FEATURES), "--num_workers", "0"]  # fmt: skip
    result = bundle_run("--config_file", "['configs/train.json','configs/evaluate.json']", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "evaluation" / "summary.json").read_text())
    segmenter = load_segmenter(BUNDLE_ROOT, ckpt_dir=str(models), **{"network_def#features": FEATURES})
    test = build_datalist(pengwin_root)["test"]
    scores = [score_image(segmenter.segment(item["image"]).bitmap, read_fragment_label(item["label"])) for item in test]
    assert summary["num_images"] == len(test) > 0
    for name in ("fracture_iou", "anatomical_iou", "fracture_hd95", "anatomical_hd95"):
        assert summary[name] == pytest.approx(np.mean([score[name] for score in scores])), name


@pytest.mark.slow
def test_cli_names_a_bad_image_size_in_one_line(tmp_path, model_root):
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "case.tif", raw_xray(SIZE, seed=7))
    result = run_bundle("--dataset_dir", str(inputs), "--output_dir", str(tmp_path / "out"),
                        "--bundle_root", str(model_root), "--image_size", "big")  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "image_size must be [height, width] in pixels, or 0 for none, got 'big'" in result.stderr.splitlines()[-1]


@pytest.mark.slow
def test_cli_run_without_a_usable_input_removes_their_earlier_outputs_and_fails_in_one_line(tmp_path, model_root):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    write_nan_image(inputs / "case.tif")
    for name in ("case.tif", "case.json", "case_overlay.png", "notes.txt"):
        (out / name).write_text("an earlier run's")  # outputs of the input, and a user's file
    result = run_bundle("--dataset_dir", str(inputs), "--output_dir", str(out), "--bundle_root", str(model_root))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "none of the 1 input files is usable (case.tif: image contains" in result.stderr.strip().splitlines()[-1]
    assert [path.name for path in out.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_cli_grand_challenge_onnx_run_skips_bad_files_writes_good_one_and_fails(tmp_path, model_root):
    inputs = tmp_path / "in"
    inputs.mkdir()
    raw = raw_xray(SIZE, seed=5)
    tifffile.imwrite(inputs / "case_good.tif", raw)
    write_not_a_tiff(inputs / "case_text.tif")
    write_nan_image(inputs / "case_nan.tiff")
    out = tmp_path / "submission"
    out.mkdir()
    (out / "case_nan.tif").write_text("an earlier run's bit map")  # must not pass for this run's
    result = run_bundle(
        "--grand_challenge", "true", "--model_format", "onnx", "--cpu_bf16", "False",
        "--dataset_dir", str(inputs), "--output_dir", str(out), "--bundle_root", str(model_root),
    )
    assert result.returncode != 0
    assert "1 of 3 input(s) processed, 2 failed" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("error: 2 of 3 input(s) failed (case_nan.tiff, case_text.tif)")
    assert "Traceback" not in result.stderr
    assert "case_text.tif: not a readable TIFF" in result.stdout and "case_nan.tiff: image contains" in result.stdout
    assert [p.name for p in out.iterdir()] == ["case_good.tif"]  # submission only, under the input's name
    assert f"removed {out / 'case_nan.tif'}: its input" in result.stdout
    _, reference = bitmap_of(load_network("pt", small_unet(seed=9), **model_paths(model_root)), raw)
    bitmap = tifffile.imread(out / "case_good.tif")
    assert bitmap.dtype == np.uint32 and bitmap.shape == (SIZE, SIZE)
    assert np.count_nonzero(bitmap != reference) <= allowed_differences(bitmap)
