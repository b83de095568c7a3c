"""Tests for configs/train_vgg16.json (merged after train.json, evaluate.json or an inference config) and for
pengwin-compare, the BasicUNet / VGG16 U-Net comparison command."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.transforms import Compose

from helpers import BUNDLE_ROOT, write_pair
from custom_transforms import MAIN_OTHER_CHANNELS, CLAHEd, NegLogWindowd
from pengwin_xray.compare import compare, count_parameters, format_table
from pengwin_xray.compare import main as compare_main
from scripts.errors import root_cause
from scripts.handlers import EncoderFreezeHandler
from scripts.networks import VGG16Encoder, VGG16UNet

#: ImageNet channel statistics, written out here as an independent copy of the config's
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: small decoder and network input for the end-to-end runs, to keep them quick
SMALL_DECODER = [8, 8, 8, 8]
SMALL_INPUT = [32, 32]
FREEZE_TARGET = "scripts.handlers.EncoderFreezeHandler"


def merged_parser(*config_names: str, **overrides: object) -> ConfigParser:
    """A parser of the bundle configs ``config_names`` merged in order, with ``overrides`` applied."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / name) for name in config_names])
    parser.update({"bundle_root": str(BUNDLE_ROOT), **overrides})
    return parser


def write_vgg16_weights(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Save a state dict with torchvision ``vgg16`` feature key names and shapes and random values; return it."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {f"features.{key}": value.shape for key, value in VGG16Encoder().features.state_dict().items()}
    state = {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    state["classifier.0.weight"] = torch.randn(4, 8, generator=generator)  # ignored by the loader, as torchvision's
    torch.save(state, path)
    return state


def assert_encoder_equals(network: VGG16UNet, state: dict[str, torch.Tensor]) -> None:
    for key, value in network.encoder.features.state_dict().items():
        torch.testing.assert_close(value, state[f"features.{key}"], rtol=0, atol=0, msg=key)


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_pair(tmp_path: Path) -> dict[str, str]:
    write_pair(tmp_path, "001_0000.tif", size=64)
    folder = tmp_path / "train" / "{}" / "images" / "x-ray" / "001_0000.tif"
    return {"image": str(folder).format("input"), "label": str(folder).format("output")}


@pytest.mark.parametrize("with_weights", [True, False])
def test_vgg16_input_is_grey_replicated_to_three_imagenet_normalised_channels(
    with_weights: bool, one_pair: dict[str, str], tmp_path: Path
) -> None:
    weights_path = tmp_path / "vgg16.pt"
    state = write_vgg16_weights(weights_path) if with_weights else None
    base = merged_parser("train.json")
    vgg16 = merged_parser("train.json", "train_vgg16.json", vgg16_weights=str(weights_path) if state else None)

    def preprocess(parser: ConfigParser) -> torch.Tensor:
        transforms = parser.get_parsed_content("load_transforms") + parser.get_parsed_content("image_transforms")
        return torch.as_tensor(Compose(transforms)(one_pair)["image"])

    grey, image = preprocess(base), preprocess(vgg16)
    assert grey.shape == (1, 64, 64) and image.shape == (3, 64, 64)
    expected = (grey - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(image, expected, rtol=1e-5, atol=1e-5)

    network = vgg16.get_parsed_content("network_def")
    assert isinstance(network, VGG16UNet) and (network.in_channels, network.out_channels) == (3, MAIN_OTHER_CHANNELS)
    if state is not None:
        assert_encoder_equals(network, state)


def test_vgg16_inferer_runs_the_network_at_224_and_returns_logits_at_label_size(one_pair: dict[str, str]) -> None:
    parser = merged_parser("train.json", "train_vgg16.json", **{"network_def#decoder_channels": SMALL_DECODER})
    network, inferer = parser.get_parsed_content("network_def").eval(), parser.get_parsed_content("inferer")
    seen_sizes = []

    def recording_network(inputs: torch.Tensor) -> torch.Tensor:
        seen_sizes.append(tuple(inputs.shape))
        return network(inputs)

    with torch.no_grad():
        logits = inferer(torch.rand(2, 3, 64, 64), recording_network)
    assert seen_sizes == [(2, 3, 224, 224)]
    assert logits.shape == (2, MAIN_OTHER_CHANNELS, 64, 64) and logits.dtype == torch.float32


@pytest.mark.parametrize("freeze_epochs, trainable_per_epoch", [(0, None), (2, [False, False, True])])
def test_freeze_encoder_epochs_appends_a_handler_that_unfreezes_after_those_epochs(
    freeze_epochs: int, trainable_per_epoch: list[bool] | None
) -> None:
    base_handlers = merged_parser("train.json").get("train#handlers")
    parser = merged_parser("train.json", "train_vgg16.json", freeze_encoder_epochs=freeze_epochs)
    handlers = parser.get("train#handlers")
    assert handlers[: len(base_handlers)] == base_handlers  # appended: train.json's handlers are all kept
    assert [handler["_target_"] for handler in handlers[len(base_handlers) :]] == [FREEZE_TARGET]
    handler = parser.get_parsed_content(f"train#handlers#{len(base_handlers)}")
    if trainable_per_epoch is None:
        assert handler is None  # disabled: the trainer gets no freeze handler
        return
    assert isinstance(handler, EncoderFreezeHandler)
    model = VGG16UNet(out_channels=2, decoder_channels=SMALL_DECODER)
    seen: list[bool] = []
    engine = Engine(lambda _engine, _batch: seen.append(model.encoder.features[0].weight.requires_grad))
    engine.network = model
    handler.attach(engine)
    engine.run([0], max_epochs=len(trainable_per_epoch))
    assert seen == trainable_per_epoch


@pytest.mark.parametrize("freeze_epochs", [2.7, -1, "two"])
def test_freeze_encoder_epochs_that_are_no_whole_number_are_refused_naming_the_setting(freeze_epochs) -> None:
    parser = merged_parser("train.json", "train_vgg16.json", freeze_encoder_epochs=freeze_epochs)
    index = len(merged_parser("train.json").get("train#handlers"))
    with pytest.raises(Exception) as info:
        parser.get_parsed_content(f"train#handlers#{index}")
    assert "freeze_encoder_epochs must be a whole number, 0 or more" in str(root_cause(info.value))


@pytest.mark.parametrize(
    "configs, key",
    [(["train.json"], "ckpt_dir"), (["train.json", "evaluate.json"], "ckpt_path"), (["inference.json"], "ckpt_path")],
)
def test_vgg16_files_live_beside_not_over_the_basicunet_model(configs: list[str], key: str) -> None:
    default = Path(merged_parser(*configs).get_parsed_content(key))
    vgg16 = Path(merged_parser(*configs, "train_vgg16.json").get_parsed_content(key))
    assert vgg16.relative_to(BUNDLE_ROOT).as_posix().startswith("models/vgg16unet")
    assert vgg16 != default and default.relative_to(BUNDLE_ROOT).parts[:2] in (("models",), ("models", "model.pt"))


@pytest.mark.parametrize("base", ["minimal", "inference.json"])
def test_vgg16_override_merges_after_an_inference_config_without_a_train_section(base: str, tmp_path: Path) -> None:
    if base == "minimal":
        base_path = tmp_path / "inference.json"
        base_path.write_text(
            json.dumps(
                {
                    "imports": ["$import custom_transforms", "$import scripts"],
                    "use_clahe": True,
                    "out_channels": 30,
                    "network_def": {
                        "_target_": "BasicUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": "@out_channels"
                    },
                    "inferer": {"_target_": "scripts.inferers.PengwinInferer", "cpu_bf16": False},
                    "image_transforms": [
                        {"_target_": "custom_transforms.NegLogWindowd", "keys": "image"},
                        {"_target_": "custom_transforms.CLAHEd", "_disabled_": "$not @use_clahe", "keys": "image"},
                    ],
                }
            )
        )
    else:
        base_path = BUNDLE_ROOT / "configs" / base
    parser = ConfigParser()
    with pytest.warns(UserWarning, match="copying instead"):  # MONAI's notice for '+' keys absent from the base
        parser.read_config([str(base_path), str(BUNDLE_ROOT / "configs" / "train_vgg16.json")])
    parser.update({"bundle_root": str(BUNDLE_ROOT)})
    assert isinstance(parser.get_parsed_content("network_def"), VGG16UNet)
    assert parser.get_parsed_content("inferer").spatial_size == (224, 224)
    names = [type(transform).__name__ for transform in parser.get_parsed_content("image_transforms")]
    assert names[:2] == [NegLogWindowd.__name__, CLAHEd.__name__]
    assert names[-2:] == ["RepeatChanneld", "NormalizeIntensityd"]


@pytest.mark.parametrize("recipes, overrides", [(["default", "unet"], {}), (["default"], {"unet": {}}), ([], {})])
def test_compare_rejects_unknown_or_no_recipes(tmp_path: Path, recipes: list, overrides: dict) -> None:
    with pytest.raises(ValueError, match="recipe"):
        compare(str(tmp_path), 1, tmp_path, BUNDLE_ROOT, recipe_overrides=overrides, recipes=recipes)


def test_compare_command_names_an_unknown_recipe_in_one_line(capsys) -> None:
    with pytest.raises(SystemExit, match="unknown or no recipe.*'unet'.*default, vgg16unet, seed, slots"):
        compare_main(["--recipes", "default,unet", "--bundle_root", str(BUNDLE_ROOT)])


def test_compare_command_names_a_missing_dataset_folder_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_root"
    with pytest.raises(SystemExit, match=rf"^pengwin-compare: {re.escape(str(missing))}: dataset folder does not exist$"):
        compare_main(["--dataset_dir", str(missing), "--bundle_root", str(BUNDLE_ROOT), "--output_dir", str(tmp_path)])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--max_epochs", "0"], "max_epochs must be a whole number, 1 or more, got 0"),
        (["--override", "max_epoch=2"], r"--max_epoch: no such setting in .*train.json.*; did you mean --max_epochs\?"),
        (["--recipes", "vgg16unet", "--vgg16_override", "freeze_epochs=1"], "--freeze_epochs: no such setting in"),
        (["--output_dir", "{file}"], ".*a_file: --output_dir is a file, not a folder"),
    ],
)
def test_compare_command_refuses_bad_arguments_in_one_line_before_the_data(tmp_path: Path, arguments, message) -> None:
    (tmp_path / "a_file").write_text("")
    arguments = [argument.format(file=tmp_path / "a_file") for argument in arguments]
    missing = tmp_path / "no_such_root"  # the data is looked at after the arguments: its error would come first
    with pytest.raises(SystemExit, match=f"^pengwin-compare: {message}") as error:
        compare_main(["--dataset_dir", str(missing), "--bundle_root", str(BUNDLE_ROOT), *arguments])
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run of the comparison command on 5 patients of 64 px, 1 epoch: the two-stage recipe (so the default runs
    first, as its localiser) and the VGG16 U-Net with weights given and frozen."""
    root = tmp_path_factory.mktemp("pengwin")
    for patient in range(1, 6):  # split by patient: 3 training, 1 test, 1 validation
        write_pair(root, f"{patient:03d}_0000.tif", size=64, seed=patient)
    weights_path = root / "vgg16.pt"
    state = write_vgg16_weights(weights_path)
    output_dir = root / "compare"
    argv = [
        "--dataset_dir", str(root), "--max_epochs", "1", "--output_dir", str(output_dir), "--bundle_root", str(BUNDLE_ROOT),
        "--recipes", "two_stage,vgg16unet",
        "--vgg16_weights", str(weights_path),
        "--override", "num_workers=0", "--override", "batch_size=2",
        "--vgg16_override", f"network_def#decoder_channels={json.dumps(SMALL_DECODER)}",
        "--vgg16_override", f"inferer#spatial_size={json.dumps(SMALL_INPUT)}",
        "--vgg16_override", "freeze_encoder_epochs=1",
    ]  # fmt: skip
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert compare_main(argv) is None  # the console script exits with 0
    report = json.loads((output_dir / "compare.json").read_text())
    return {"report": report, "stdout": stdout.getvalue(), "output_dir": output_dir, "weights": state}


def vgg16_from_config(**overrides: object) -> VGG16UNet:
    parser = merged_parser("train.json", "train_vgg16.json", **{"network_def#decoder_channels": SMALL_DECODER})
    parser.update(overrides)
    return parser.get_parsed_content("network_def")


def test_compare_prints_and_writes_one_row_per_recipe(comparison: dict) -> None:
    report, output_dir = comparison["report"], comparison["output_dir"]
    rows = {row["recipe"]: row for row in report["rows"]}
    assert list(rows) == ["default", "two_stage", "vgg16unet"]  # the localiser's recipe before the two-stage one
    table = format_table(report["rows"])
    assert table in comparison["stdout"]
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == list(rows)
    assert (output_dir / "compare.md").read_text() == table + "\n"
    assert json.loads((output_dir / "compare.json").read_text()) == report
    assert report["split"] == {"training": 3, "validation": 1, "test": 1} and report["max_epochs"] == 1

    basicunet = merged_parser("train.json").get_parsed_content("network_def")
    assert rows["default"]["parameters"] == count_parameters(basicunet)
    assert rows["vgg16unet"]["parameters"] == count_parameters(vgg16_from_config())
    assert rows["two_stage"]["parameters"] == count_parameters(basicunet)  # the fragment network
    for row in rows.values():
        # one epoch over the 3 training images; the two-stage fragment network trains on up to 3 bone crops of each
        assert row["train_images"] == 3 if row["recipe"] != "two_stage" else 3 <= row["train_images"] <= 9
        images_per_s = row["train_images"] / row["train_seconds"]
        assert row["train_seconds"] > 0 and math.isclose(row["train_images_per_s"], images_per_s)
        localiser_seconds = rows["default"]["train_seconds"] if row["recipe"] == "two_stage" else 0.0
        assert math.isclose(row["train_minutes"], (row["train_seconds"] + localiser_seconds) / 60)
        assert math.isfinite(row["peak_rss_mib"]) and row["peak_rss_mib"] > 0
        summary = json.loads(Path(row["summary"]).read_text())
        pairs = [("iou_RI", "val_iou_RI"), ("fracture_iou", "fracture_iou"), ("anatomical_iou", "anatomical_iou")]
        for key, summary_key in pairs:
            assert row[key] == summary[summary_key] and 0.0 <= row[key] <= 1.0, key
        assert row["fracture_hd95"] == summary["fracture_hd95"] > 0 and row["epochs"] == 1
    assert "default: best val_fracture_iou" in comparison["stdout"]  # validation echoed while each recipe trains


def test_compare_logs_every_run_to_one_mlflow_experiment(comparison: dict) -> None:
    from mlflow.tracking import MlflowClient

    report = comparison["report"]
    client = MlflowClient(report["tracking_uri"])
    experiment = client.get_experiment_by_name(report["experiment_name"])
    runs = client.search_runs([experiment.experiment_id])
    names = sorted(run.info.run_name.rsplit("-", 2)[0] for run in runs)
    assert names == [
        "default", "evaluate-default", "evaluate-two_stage", "evaluate-vgg16unet", "two_stage", "vgg16unet"
    ]  # fmt: skip
    two_stage_run = next(run for run in runs if run.info.run_name.startswith("two_stage"))
    assert two_stage_run.data.params["localiser"] == str(report["rows"][0]["checkpoint"])  # the default's model.pt
    vgg16_run = next(run for run in runs if run.info.run_name.startswith("vgg16unet"))
    assert vgg16_run.data.params["network"] == "VGG16UNet"
    assert vgg16_run.data.params["freeze_encoder_epochs"] == "1"


def test_vgg16_run_saves_a_model_whose_frozen_encoder_is_the_pretrained_one(comparison: dict) -> None:
    models = comparison["output_dir"] / "vgg16unet" / "models"
    network = vgg16_from_config()
    network.load_state_dict(torch.load(models / "model.pt", weights_only=True), strict=True)
    assert_encoder_equals(network, comparison["weights"])  # loaded from the file, then not trained (frozen)
    # the optimiser stepped only the parameters that got gradients: all but the encoder's
    optimizer_state = torch.load(models / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    encoder_count = len(list(network.encoder.parameters()))
    assert sorted(optimizer_state) == list(range(encoder_count, len(list(network.parameters()))))


def test_evaluate_config_merged_after_vgg16_writes_the_summary(comparison: dict) -> None:
    row = next(row for row in comparison["report"]["rows"] if row["recipe"] == "vgg16unet")
    summary = json.loads(Path(row["summary"]).read_text())
    assert Path(row["summary"]).parent == comparison["output_dir"] / "vgg16unet" / "evaluation"
    assert summary["num_images"] == 1
    for key in ("fracture_iou", "anatomical_iou", "val_mean_iou", "val_iou_SA", "val_iou_LI", "val_iou_RI"):
        assert math.isfinite(summary[key]), key


def test_trained_vgg16_torchscript_equals_eager(comparison: dict) -> None:
    network = vgg16_from_config()
    network.load_state_dict(torch.load(comparison["output_dir"] / "vgg16unet" / "models" / "model.pt"))
    network.eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(network), buffer)
    buffer.seek(0)
    scripted = torch.jit.load(buffer)
    image = torch.randn(1, 3, *SMALL_INPUT)
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), network(image), rtol=0, atol=1e-5)
