"""Model-zoo readiness: metadata against the local schema, TorchScript/ONNX exports, and the packaged archive.

The exports and checks call the same ``monai.bundle`` functions as ``python -m monai.bundle <command>`` in this
process (each CLI start costs about 5 s); the archive test runs ``monai.bundle run`` in a separate, isolated
process from the unpacked archive, as a user of the archive would.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, ckpt_export, onnx_export, verify_metadata, verify_net_in_out
from monai.data import load_net_with_metadata

from custom_transforms import MAIN_OTHER_CHANNELS
from custom_transforms.constants import (
    CATEGORY_NAMES,
    IMAGE_SIZE,
    NUM_CATEGORIES,
    NUM_CHANNELS,
    VALID_BITS_MASK,
    channel_category_fragment,
    fragment_bit,
    fragment_name,
)
from pengwin_xray.atomic import file_sha256
from pengwin_xray.model_files import export_mismatch
from pengwin_xray.package import BUNDLE_NAME, archive_members, bundle_version, main, package_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "bundle"
CONFIGS = BUNDLE_ROOT / "configs"
META_FILE = CONFIGS / "metadata.json"
SCHEMA_FILE = CONFIGS / "meta_schema.json"
TRAIN_CONFIG = CONFIGS / "train.json"
VGG16_CONFIG = CONFIGS / "train_vgg16.json"
INFERENCE_CONFIG = CONFIGS / "inference.json"

#: the ONNX export settings the model card documents: named tensors, dynamic batch and image size
ONNX_CONVERTER_KWARGS = {
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {"image": {0: "batch", 2: "height", 3: "width"}, "pred": {0: "batch", 2: "height", 3: "width"}},
}
EXPORT_ATOL = 1e-4


def _metadata() -> dict:
    return json.loads(META_FILE.read_text(encoding="utf-8"))


def _requirement_pins() -> dict[str, str]:
    """``name: version`` of every ``name==version`` line of requirements.txt (names lower-cased)."""
    pins = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


# ---------------------------------------------------------------------------------------------- metadata


def test_metadata_verifies_offline_against_local_schema():
    verify_metadata(meta_file=str(META_FILE), filepath=str(SCHEMA_FILE))


_DELETE = object()


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("network_data_format", _DELETE, "'network_data_format' is a required property"),
        ("required_packages_version", _DELETE, "'required_packages_version' is a required property"),
        ("version", "first", "'first' does not match"),
        ("network_data_format#outputs#pred#num_channels", 0, "0 is less than the minimum of 1"),
        ("network_data_format#inputs#image#value_range", [0, 1, 2], r"\[0, 1, 2\] is not valid"),
        ("network_data_format#outputs#pred#type", "mask", "'mask' is not one of"),
        ("network_data_format#inputs#image#channel_def#red", "R", "'red' does not match"),
    ],
    ids=["no-network-format", "no-packages", "bad-version", "zero-channels", "bad-range", "bad-type", "bad-channel"],
)
def test_local_schema_rejects_broken_metadata(tmp_path, key, value, expected):
    metadata = _metadata()
    *parents, leaf = key.split("#")
    node = metadata
    for parent in parents:
        node = node[parent]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=expected):
        verify_metadata(meta_file=str(broken), filepath=str(SCHEMA_FILE))


def test_metadata_channels_follow_the_encoding_constants():
    metadata = _metadata()
    label_classes = metadata["label_classes"]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert sorted(label_classes, key=int) == [str(channel) for channel in range(NUM_CHANNELS)]
    for channel in range(NUM_CHANNELS):
        category, fragment = channel_category_fragment(channel)
        description = label_classes[str(channel)]
        assert description.startswith(f"{fragment_name(category, fragment)}:"), description
        assert f"(label bit {fragment_bit(category, fragment)})" in description, description
    # the network predicts the main/other channels of the default recipe: per bone, main then other fragments
    assert pred["num_channels"] == MAIN_OTHER_CHANNELS
    for category in range(1, NUM_CATEGORIES + 1):
        name = CATEGORY_NAMES[category - 1]
        main, other = pred["channel_def"][str(2 * category - 2)], pred["channel_def"][str(2 * category - 1)]
        assert main.startswith(f"{name}-main:") and f"(label bit {fragment_bit(category, 1)})" in main
        assert other.startswith(f"{name}-other:") and f"bits {fragment_bit(category, 2)}..{fragment_bit(category, 10)}" in other
    assert pred["spatial_shape"] == metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
    assert pred["spatial_shape"] == [IMAGE_SIZE, IMAGE_SIZE]


def test_metadata_versions_match_requirements():
    metadata = _metadata()
    pins = _requirement_pins()
    assert metadata["version"] in metadata["changelog"]
    assert metadata["monai_version"] == pins["monai"]
    assert metadata["pytorch_version"] == pins["torch"]
    assert metadata["numpy_version"] == pins["numpy"]
    for package, version in metadata["required_packages_version"].items():
        assert pins.get(package.lower()) == version, f"{package}: {version} in metadata, {pins.get(package.lower())}"


# ---------------------------------------------------------------------------------------------- networks

#: the VGG16 U-Net takes the grey X-ray repeated to 3 channels at 224 x 224 (train_vgg16.json): its exports carry
#: metadata saying so
VGG16_META = {
    "_meta_#network_data_format#inputs#image#num_channels": 3,
    "_meta_#network_data_format#inputs#image#spatial_shape": [224, 224],
}
#: (config files, overrides, export input shape, check input shape): small networks, so that exports stay fast;
#: the check shape differs from the export shape to exercise the dynamic ONNX axes
NETWORK_CASES = {
    "basicunet": ([TRAIN_CONFIG], {"network_def#features": [8, 8, 16, 16, 32, 8]}, [1, 1, 64, 64], (2, 1, 64, 96)),
    "vgg16unet": (
        [TRAIN_CONFIG, VGG16_CONFIG],
        {"network_def#decoder_channels": [16, 16, 8, 8], **VGG16_META},
        [1, 3, 64, 64],
        (2, 3, 96, 64),
    ),
}


@pytest.mark.parametrize(
    "configs, overrides",
    [([TRAIN_CONFIG], {}), ([TRAIN_CONFIG, VGG16_CONFIG], VGG16_META)],
    ids=["basicunet", "vgg16unet"],
)
def test_network_input_output_match_metadata(configs, overrides):
    verify_net_in_out(
        "network_def", meta_file=str(META_FILE), config_file=[str(c) for c in configs], device="cpu", **overrides
    )


@pytest.mark.parametrize("case", sorted(NETWORK_CASES))
def test_torchscript_and_onnx_exports_match_eager(tmp_path, case):
    configs, overrides, export_shape, check_shape = NETWORK_CASES[case]
    # a snapshot of the configs: the export embeds them, and the comparison below must see the same text
    config_files = [str(shutil.copy(config, tmp_path)) for config in configs]
    parser = ConfigParser()
    parser.read_config(config_files)
    parser.read_meta(str(META_FILE))
    for key, value in overrides.items():
        parser[key] = value
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    ckpt = tmp_path / "model.pt"
    torch.save(network.state_dict(), ckpt)
    common = {"ckpt_file": str(ckpt), "meta_file": str(META_FILE), "config_file": config_files, **overrides}
    ckpt_export("network_def", filepath=str(tmp_path / "model.ts"), **common)
    onnx_export(
        "network_def",
        filepath=str(tmp_path / "model.onnx"),
        input_shape=export_shape,
        converter_kwargs=ONNX_CONVERTER_KWARGS,
        **common,
    )

    torchscript, meta, extra = load_net_with_metadata(str(tmp_path / "model.ts"), more_extra_files=["train.json"])
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    channels = check_shape[1]
    for shape in (check_shape, (1, channels, 224, 224), (1, channels, 448, 448)):  # the demo's and PENGWIN's sizes
        image = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            eager, scripted = network(image).numpy(), torchscript(image).numpy()
        (onnx_output,) = session.run(["pred"], {"image": image.numpy()})
        assert eager.shape == (shape[0], MAIN_OTHER_CHANNELS, *shape[2:])
        np.testing.assert_allclose(scripted, eager, rtol=0, atol=EXPORT_ATOL)
        np.testing.assert_allclose(onnx_output, eager, rtol=0, atol=EXPORT_ATOL)
    for export in ("model.ts", "model.onnx"):  # what pengwin-package takes for exports of this model.pt
        assert export_mismatch(tmp_path / export, ckpt) is None
    assert meta["version"] == _metadata()["version"]
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == check_shape[1]
    assert json.loads(extra["train.json"]) == json.loads(Path(config_files[0]).read_text())


# ---------------------------------------------------------------------------------------------- packaging


def _write_model_file(path: Path, seed: int = 0) -> None:
    """A small network's weights (``.pt``) or its export (``.ts``, ``.onnx``), the same network for one ``seed``."""
    torch.manual_seed(seed)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 6, 1)).eval()
    if path.suffix == ".ts":
        torch.jit.save(torch.jit.script(network), str(path))
    elif path.suffix == ".onnx":
        torch.onnx.export(network, (torch.rand(1, 1, 16, 16),), str(path), dynamo=False)
    else:
        torch.save(network.state_dict(), path)


def _bundle_copy(root: Path, model_files: tuple[str, ...] = ()) -> Path:
    """A copy of the bundle's sources under ``root`` with the files named ``model_files`` in models/: weights and
    exports of one small network, resume checkpoints of bytes, post-processing chosen for the ``model.pt`` beside it."""
    copy = root / "bundle"
    shutil.copytree(BUNDLE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "eval", "data", "models"))
    (copy / "models").mkdir()
    (copy / "eval").mkdir()
    (copy / "eval" / "run.log").write_text("not for the archive")
    (copy / "scripts" / "__pycache__").mkdir()
    (copy / "scripts" / "__pycache__" / "package.cpython-311.pyc").write_bytes(b"\0")
    for name in model_files:
        path = copy / "models" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "postprocessing.json":  # chosen for the model.pt beside it
            path.write_text(json.dumps({"threshold": 0.5, "model_sha256": file_sha256(path.with_name("model.pt"))}))
        elif path.name.startswith("checkpoint"):
            path.write_bytes(f"training state of {name}".encode())
        else:
            _write_model_file(path)
    return copy


def test_package_writes_versioned_archive_with_bundle_layout(tmp_path, capsys):
    bundle = _bundle_copy(
        tmp_path,
        ("model.pt", "model.onnx", "checkpoint.pt", "checkpoint_epoch=3.pt", "postprocessing.json",
         "vgg16unet/model.pt", "vgg16unet/checkpoint.pt", "vgg16unet/postprocessing.json"),
    )  # fmt: skip
    out = tmp_path / "dist"

    assert main(["--out", str(out), "--bundle_root", str(bundle)]) is None  # the console script exits with 0

    archive = Path(capsys.readouterr().out.strip())
    assert archive == out / f"{BUNDLE_NAME}_v{bundle_version(bundle)}.zip"
    assert sorted(p.name for p in out.iterdir()) == [archive.name]  # no temporary file left behind
    names = set(zipfile.ZipFile(archive).namelist())
    prefix = f"{BUNDLE_NAME}/"
    assert all(name.startswith(prefix) for name in names)
    for required in ("configs/metadata.json", "configs/meta_schema.json", "configs/logging.conf",
                     "configs/train.json", "configs/inference.json", "scripts/__init__.py", "scripts/handlers.py",
                     "docs/README.md", "docs/data_license.txt", "LICENSE", "custom_transforms/__init__.py",
                     "custom_transforms/constants.py", "pengwin_xray/__init__.py", "pengwin_xray/synthetic/__init__.py",
                     "models/model.pt", "models/model.onnx", "models/postprocessing.json",
                     "models/vgg16unet/model.pt", "models/vgg16unet/postprocessing.json"):
        assert prefix + required in names, required
    assert not [name for name in names if name.startswith(prefix + "models/checkpoint")]
    assert prefix + "models/vgg16unet/checkpoint.pt" not in names
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in names if name.startswith((prefix + "eval/", prefix + "data/"))]


def test_package_holds_model_folders_at_any_depth(tmp_path):
    nested = ("vgg16unet/fragments/model.pt", "vgg16unet/fragments/model.onnx", "vgg16unet/fragments/checkpoint.pt")
    bundle = _bundle_copy(tmp_path, ("model.pt", "vgg16unet/model.pt", *nested))
    names = {name for _, name in archive_members(bundle)}
    prefix = f"{BUNDLE_NAME}/models/vgg16unet/fragments/"
    assert {prefix + "model.pt", prefix + "model.onnx"} <= names and prefix + "checkpoint.pt" not in names


def test_package_refuses_a_post_processing_chosen_for_another_model(tmp_path):
    bundle = _bundle_copy(tmp_path, ("model.pt", "postprocessing.json"))
    (bundle / "models" / "model.pt").write_bytes(b"weights of a newer training")
    with pytest.raises(ValueError, match="postprocessing.json: chosen for another model than .*model.pt"):
        archive_members(bundle)
    (bundle / "models" / "postprocessing.json").write_text("[1, 2]")  # damaged: one line naming it, as inference says
    with pytest.raises(ValueError, match=r"postprocessing.json: not a post-processing choice \(a JSON list\)"):
        archive_members(bundle)


@pytest.mark.parametrize("export", ["model.ts", "model.onnx"])
def test_package_refuses_an_export_of_another_model_than_the_model_pt_beside_it(tmp_path, export):
    bundle = _bundle_copy(tmp_path, ("model.pt", export))
    assert {f"{BUNDLE_NAME}/models/{export}"} <= {name for _, name in archive_members(bundle)}  # exported from it
    _write_model_file(bundle / "models" / "model.pt", seed=1)  # a newer training, not exported again
    with pytest.raises(ValueError, match=f"models/{export}: exported from another model than .*models/model.pt "
                                         r"\(its weight 0.weight differs from that of"):
        archive_members(bundle)
    (bundle / "models" / export).write_bytes(b"not a model")  # unreadable: one line naming it
    with pytest.raises(ValueError, match=f"models/{export}: not a (readable ONNX|loadable TorchScript) model"):
        archive_members(bundle)


def test_package_warns_when_no_model_file(tmp_path, caplog):
    bundle = _bundle_copy(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pengwin_xray.package"):
        members = archive_members(bundle)
    assert not [name for _, name in members if "/models/" in name]
    assert "no model file" in caplog.text


def test_package_refuses_version_missing_from_changelog(tmp_path):
    bundle = _bundle_copy(tmp_path, ("model.pt",))
    metadata = _metadata()
    metadata["version"] = "9.9.9"
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"metadata\.json: version 9\.9\.9 has no entry in 'changelog'"):
        package_bundle(tmp_path / "dist", bundle)
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


#: runs ``python -m monai.bundle <args>`` in this interpreter (cwd first on sys.path, as with ``-m``), then prints
#: the files of every ``scripts``/``custom_transforms``/``pengwin_xray`` module the run imported
_RUN_AND_REPORT_IMPORTS = """
import json, runpy, sys
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
loaded = {name: module.__file__ for name, module in sys.modules.items()
          if name.split(".")[0] in ("scripts", "custom_transforms", "pengwin_xray") and getattr(module, "__file__", None)}
print("LOADED_MODULES=" + json.dumps(loaded))
"""


@pytest.mark.slow
def test_unpacked_archive_runs_inference_with_its_own_code(tmp_path):
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    torch.manual_seed(0)
    bundle = _bundle_copy(tmp_path)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    archive = package_bundle(tmp_path / "dist", bundle)
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(archive).extractall(unpacked)
    root = unpacked / BUNDLE_NAME
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(inputs / "001_0000.tif", rng.uniform(0.2, 56.0, (IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32))
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}

    result = subprocess.run(
        [sys.executable, "-E", "-s", "-c", _RUN_AND_REPORT_IMPORTS, "run", "--config_file", "configs/inference.json",
         "--dataset_dir", str(inputs), "--output_dir", str(outputs)],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )

    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "skipping logging" not in log  # configs/logging.conf was found and applied
    loaded = json.loads(re.search(r"^LOADED_MODULES=(.*)$", result.stdout, re.MULTILINE).group(1))
    assert {"scripts", "scripts.loading", "custom_transforms", "pengwin_xray"} <= set(loaded)
    outside = {name: path for name, path in loaded.items() if not Path(path).resolve().is_relative_to(root.resolve())}
    assert not outside, f"modules imported from outside the unpacked bundle: {outside}"
    bitmap = tifffile.imread(outputs / "001_0000.tif")
    assert bitmap.shape == (IMAGE_SIZE, IMAGE_SIZE) and np.issubdtype(bitmap.dtype, np.integer)
    assert bitmap.any() and not np.bitwise_and(bitmap.astype(np.int64), ~VALID_BITS_MASK).any()
    verify_metadata(
        meta_file=str(root / "configs" / "metadata.json"), filepath=str(root / "configs" / "meta_schema.json")
    )


def test_package_command_outside_a_bundle_folder_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default bundle root is the folder the command is started in
    with pytest.raises(SystemExit, match=r"^pengwin-package: configs/metadata\.json: bundle metadata not found"):
        main(["--out", str(tmp_path / "dist")])
