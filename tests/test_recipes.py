"""The training recipes as config overlays: what each one trains, selects and outputs."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.handlers import ValidationHandler

from custom_transforms import (
    MAIN_OTHER_CHANNELS,
    MAIN_OTHER_RIM_CHANNELS,
    NUM_CHANNELS,
    FragmentSizeWeights,
    MainOtherFragments,
    decode_fragment_bits,
    fragment_channel,
)
from custom_transforms.io import read_fragment_label
from scripts.errors import root_cause
from scripts.handlers import EpochTimeLimit, require_validated_epoch
from scripts.inferers import PengwinInferer, TwoStageInferer
from scripts.losses import FragmentDiceBCELoss
from scripts.metrics import FractureIoU
from scripts.tuning import check_pipeline

from helpers import BUNDLE_ROOT, TINY_SYNTHETIC, assert_valid_submissions, bundle_run, run_epochs_with_time_limit
from pengwin_xray.atomic import file_sha256
from pengwin_xray.masks import square_crop_box



def network_input_channels(overlays: tuple[str, ...]) -> int:
    return 3 if "train_vgg16.json" in overlays else 1


def recipe_parser(root: Path, *overlays: str, base: tuple[str, ...] = ("train.json",)) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / name) for name in (*base, *overlays)])
    parser.update({"bundle_root": str(root), "dataset_dir": str(root), "num_workers": 0})
    return parser


@pytest.mark.parametrize(
    "overlays, loss_type, key_metric, channels, registered_name",
    [
        ((), FragmentDiceBCELoss, "val_fracture_iou", MAIN_OTHER_CHANNELS, "basicunet"),
        (("train_seed.json",), torch.nn.BCEWithLogitsLoss, "val_mean_iou", NUM_CHANNELS, "basicunet-seed"),
        (("train_slots.json",), FragmentDiceBCELoss, "val_fracture_iou", NUM_CHANNELS, "basicunet-slots"),
        (("train_rims.json",), FragmentDiceBCELoss, "val_fracture_iou", MAIN_OTHER_RIM_CHANNELS, "basicunet-rims"),
        (("train_vgg16.json",), FragmentDiceBCELoss, "val_fracture_iou", MAIN_OTHER_CHANNELS, "vgg16unet"),
        (("train_vgg16.json", "train_seed.json"), torch.nn.BCEWithLogitsLoss, "val_mean_iou", NUM_CHANNELS,
         "vgg16unet-seed"),
    ],
)
def test_each_recipe_sets_its_loss_model_selection_channels_and_registered_name(
    pengwin_root, overlays, loss_type, key_metric, channels, registered_name
):
    parser = recipe_parser(pengwin_root, *overlays)
    # each recipe's models are versions of their own registered model, never of another recipe's
    assert parser.get_parsed_content("registered_model_name") == f"pengwin-xray-{registered_name}"
    assert type(parser.get_parsed_content("loss")) is loss_type
    assert list(parser.get_parsed_content("validate#key_metric")) == [key_metric]
    assert key_metric in parser["registered_model_tags"]  # the registered model's tag names the metric it holds
    network = parser.get_parsed_content("network_def")
    assert network(torch.zeros(1, network_input_channels(overlays), 32, 32)).shape[1] == channels
    assert len(parser.get_parsed_content("class_weights")) == channels


def test_default_recipe_selects_checkpoints_by_the_official_fracture_iou(pengwin_root):
    metric = recipe_parser(pengwin_root).get_parsed_content("validate#key_metric")["val_fracture_iou"]
    assert isinstance(metric, FractureIoU)


def test_default_trains_on_six_main_other_channels_and_validates_on_thirty(pengwin_root):
    parser = recipe_parser(pengwin_root)
    parser["train#augmentation"] = []
    train_item = parser.get_parsed_content("train#dataset")[0]
    validation_item = parser.get_parsed_content("validate#dataset")[0]
    assert train_item["label"].shape[0] == MAIN_OTHER_CHANNELS
    assert validation_item["label"].shape[0] == NUM_CHANNELS
    # conftest labels: bits 1, 11, 21 are fragment 1 of each bone, so the main channels carry them
    torch.testing.assert_close(train_item["label"][[0, 2, 4]], validation_item["label"][[0, 10, 20]].float())


@pytest.mark.parametrize("base", [("train.json",), ("inference.json",)])
def test_default_postprocessing_turns_six_logits_into_thirty_fragments(pengwin_root, base):
    postprocessing = recipe_parser(pengwin_root, base=base).get_parsed_content("postprocessing")
    logits = torch.full((MAIN_OTHER_CHANNELS, 32, 32), -8.0)
    logits[2, :10] = 8.0  # LI main fragment
    logits[3, 20:24, 2:6] = 8.0  # two LI other fragments
    logits[3, 20:30, 20:30] = 8.0
    pred = postprocessing({"pred": logits})["pred"] > 0.5  # inference keeps probabilities, training thresholds
    assert pred.shape == (NUM_CHANNELS, 32, 32)
    assert pred[fragment_channel(2, 1)].sum() == 320
    assert pred[fragment_channel(2, 2)].sum() == 100 and pred[fragment_channel(2, 3)].sum() == 16
    assert pred.sum() == 320 + 100 + 16


@pytest.mark.parametrize("base", [("train.json",), ("inference.json",)])
def test_rims_overlay_trains_fragment_rims_and_splits_touching_fragments_between_cores(pengwin_root, base):
    parser = recipe_parser(pengwin_root, "train_rims.json", base=base)
    if base == ("train.json",):
        parser["train#augmentation"] = []
        assert parser.get_parsed_content("train#dataset")[0]["label"].shape[0] == MAIN_OTHER_RIM_CHANNELS
    logits = torch.full((MAIN_OTHER_RIM_CHANNELS, 32, 32), -8.0)
    logits[4, 16:32] = 8.0  # one LI other region ...
    logits[5, 16:32, 15:17] = 8.0  # ... with a predicted rim down its middle, between two cores
    pred = parser.get_parsed_content("postprocessing")({"pred": logits})["pred"] > 0.5
    assert pred[fragment_channel(2, 2)].sum() == pred[fragment_channel(2, 3)].sum() == 16 * 16
    assert pred.sum() == 16 * 32


@pytest.mark.parametrize("size_weights", [False, True])
def test_fragment_size_weights_end_the_training_label_and_weight_the_loss(pengwin_root, size_weights):
    parser = recipe_parser(pengwin_root)
    parser.update({"train#augmentation": [], "fragment_size_weights": size_weights})
    label = parser.get_parsed_content("train#dataset")[0]["label"]
    assert label.shape[0] == MAIN_OTHER_CHANNELS + size_weights
    assert parser.get_parsed_content("loss").pixel_weights is size_weights
    if size_weights:  # the weights of the (unaugmented) label's fragments
        fragments = decode_fragment_bits(read_fragment_label(parser.get_parsed_content("datalist")["training"][0]["label"]))
        torch.testing.assert_close(label[-1:], FragmentSizeWeights()(fragments))
        logits = torch.zeros(1, MAIN_OTHER_CHANNELS, *label.shape[1:])
        assert torch.isfinite(parser.get_parsed_content("loss")(logits, label[None]))


@pytest.mark.parametrize("seam_target", [1.0, 0.5])
def test_fragment_seam_target_lowers_the_other_target_where_other_fragments_meet(pengwin_root, seam_target):
    for label in pengwin_root.glob("*/output/images/x-ray/*.tif"):  # LI fragments 2 and 3 side by side
        bitmap = tifffile.imread(label)
        bitmap[20:28, 4:16] |= 1 << 12
        bitmap[20:28, 16:28] |= 1 << 13
        tifffile.imwrite(label, bitmap)
    parser = recipe_parser(pengwin_root)
    parser.update({"train#augmentation": [], "fragment_seam_target": seam_target})
    dataset, items = parser.get_parsed_content("train#dataset"), parser.get_parsed_content("datalist")["training"]
    for index, item in enumerate(items):
        fragments = decode_fragment_bits(read_fragment_label(item["label"]))
        expected = MainOtherFragments(seam_target=seam_target)(fragments).float()
        torch.testing.assert_close(dataset[index]["label"], expected)
    seamed = any(bool((dataset[index]["label"] == 0.5).any()) for index in range(len(items)))
    assert seamed is (seam_target == 0.5)  # touching other fragments of the labels have seams
    assert parser.get_parsed_content("hyperparameters")["fragment_seam_target"] == seam_target
    assert parser.get_parsed_content("train#run_identity#settings")["fragment_seam_target"] == seam_target


@pytest.mark.parametrize("evaluation", [False, True])
def test_flip_tta_serves_the_trained_model_but_not_the_per_epoch_validation(pengwin_root, evaluation):
    parser = recipe_parser(pengwin_root, *(("evaluate.json",) if evaluation else ()))
    assert parser.get_parsed_content("validate#inferer").flip_tta is evaluation
    assert parser.get_parsed_content("model_inferer").flip_tta is True
    assert recipe_parser(pengwin_root, base=("inference.json",)).get_parsed_content("inferer").flip_tta is True


@pytest.mark.parametrize("minutes", [None, 1.5])
def test_max_minutes_adds_a_time_limit_after_validation(pengwin_root, minutes):
    parser = recipe_parser(pengwin_root)
    parser["max_minutes"] = minutes
    handlers = parser.get_parsed_content("train#handlers")
    limits = [handler for handler in handlers if isinstance(handler, EpochTimeLimit)]
    assert [limit.minutes for limit in limits] == ([minutes] if minutes else [])
    if minutes:  # validated (and checkpointed) before the limit may stop the run
        assert handlers.index(limits[0]) > handlers.index(next(h for h in handlers if isinstance(h, ValidationHandler)))


@pytest.mark.parametrize("minutes, interval, epochs_run", [(1e-9, 1, 1), (60.0, 1, 4), (1e-9, 2, 2), (1e-9, 3, 3)])
def test_epoch_time_limit_stops_only_at_the_end_of_a_validated_epoch(minutes, interval, epochs_run):
    engine = Engine(lambda engine, batch: batch)
    iterations = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: iterations.append(engine.state.iteration))
    EpochTimeLimit(minutes, interval).attach(engine)
    engine.run(range(4), max_epochs=4)
    assert engine.state.epoch == epochs_run and len(iterations) == 4 * epochs_run


def test_epoch_time_limit_stops_every_process_when_rank_zero_runs_out_of_time(tmp_path):
    context = torch.multiprocessing.get_context("spawn")
    args = (2, str(tmp_path / "init"), str(tmp_path))
    workers = [context.Process(target=run_epochs_with_time_limit, args=(rank, *args)) for rank in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0, "a process hung or failed"
    # rank 0 late: both stop after epoch 1; rank 1 late: neither stops, though rank 1's own clock has run out
    assert [(tmp_path / str(rank)).read_text().split() for rank in range(2)] == [["1", "4"]] * 2


@pytest.mark.parametrize("best_epoch", [-1, 2])
def test_a_training_that_validated_no_epoch_is_refused_before_its_choice_and_registration(best_epoch):
    evaluator = Engine(lambda engine, batch: batch)
    evaluator.state.best_metric_epoch = best_epoch
    if best_epoch > 0:
        require_validated_epoch(evaluator, 2)
    else:
        with pytest.raises(ValueError, match="val_interval 2: no epoch of this training was validated"):
            require_validated_epoch(evaluator, 2)


@pytest.mark.parametrize("minutes", [0, -1.0, float("nan"), "abc"])
def test_epoch_time_limit_rejects_a_budget_that_is_not_positive(minutes):
    with pytest.raises(ValueError, match="max_minutes must be a number above 0"):
        EpochTimeLimit(minutes)


class FixedLogits(torch.nn.Module):
    """A stand-in network: the same logits for every input of its batch; records the inputs it was called with."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.inputs = logits, []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.inputs.append(inputs)
        return self.logits.expand(len(inputs), *self.logits.shape).clone()


def localiser_logits(size: int, regions: dict[int, tuple[slice, slice]]) -> torch.Tensor:
    """[6, size, size] main/other logits: -8, and +8 in the main channel of each bone's region (bone index 0..2)."""
    logits = torch.full((MAIN_OTHER_CHANNELS, size, size), -8.0)
    for bone, region in regions.items():
        logits[(2 * bone, *region)] = 8.0
    return logits


def test_two_stage_puts_the_fragment_networks_logits_in_each_found_bones_square():
    image = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 1, 64, 64)
    left_hip = (slice(8, 24), slice(4, 20))
    localiser = FixedLogits(localiser_logits(64, {1: left_hip}))
    fragments = FixedLogits(torch.full((MAIN_OTHER_CHANNELS, 64, 64), 5.0))
    logits = TwoStageInferer(localiser, PengwinInferer(), PengwinInferer())(image, fragments)

    mask = np.zeros((64, 64), bool)
    mask[left_hip] = True
    square = square_crop_box(mask, 0.05)  # BoneCropd's crop of the same bone
    assert square == (slice(5, 27), slice(1, 23))
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[square] = True
    # the left hip's channels: the fragment network's logits in its square
    torch.testing.assert_close(logits[0, 2:4][:, inside], torch.full((2, int(inside.sum())), 5.0))
    torch.testing.assert_close(logits[0, 2:4][:, ~inside], localiser.logits[2:4][:, ~inside])  # the localiser's outside
    torch.testing.assert_close(logits[0, [0, 1, 4, 5]], localiser.logits[[0, 1, 4, 5]])  # bones not found: unchanged
    (crops,) = fragments.inputs  # one crop, the square resized to the image size
    assert crops.shape == (1, 1, 64, 64)
    assert crops.mean().item() == pytest.approx(image[0, 0][square].mean().item(), rel=0.01)


def test_two_stage_runs_all_crops_of_a_batch_in_one_call_and_skips_views_without_bones():
    localiser = FixedLogits(localiser_logits(32, {0: (slice(0, 10), slice(0, 10)), 2: (slice(20, 30), slice(5, 9))}))
    fragments = FixedLogits(torch.zeros(MAIN_OTHER_CHANNELS, 32, 32))
    TwoStageInferer(localiser, PengwinInferer(), PengwinInferer())(torch.rand(3, 1, 32, 32), fragments)
    assert [len(inputs) for inputs in fragments.inputs] == [6]  # 3 views x 2 bones

    nothing = FixedLogits(torch.full((MAIN_OTHER_CHANNELS, 32, 32), -8.0))
    logits = TwoStageInferer(nothing, PengwinInferer(), PengwinInferer())(torch.rand(2, 1, 32, 32), fragments)
    assert len(fragments.inputs) == 1 and (logits == -8.0).all()


def test_a_localiser_threshold_outside_zero_to_one_is_refused_by_its_name():
    with pytest.raises(ValueError, match=r"^localiser_threshold must be a probability strictly between 0 and 1, got 1\.5"):
        TwoStageInferer(torch.nn.Identity(), PengwinInferer(), PengwinInferer(), threshold=1.5)


def test_two_stage_refuses_stages_of_different_formulations():
    localiser = FixedLogits(localiser_logits(32, {0: (slice(0, 10), slice(0, 10))}))
    slots = FixedLogits(torch.zeros(NUM_CHANNELS, 32, 32))
    with pytest.raises(ValueError, match="both stages must be trained with the same formulation"):
        TwoStageInferer(localiser, PengwinInferer(), PengwinInferer())(torch.rand(1, 1, 32, 32), slots)


def save_localiser(root: Path, parser: ConfigParser | None = None) -> None:
    """An untrained network of ``parser``'s ``network_def`` (the default's) saved as the localiser ``models/model.pt``."""
    network = (parser or recipe_parser(root)).get_parsed_content("network_def")
    (root / "models").mkdir(exist_ok=True)
    torch.save(network.state_dict(), root / "models" / "model.pt")


def test_two_stage_overlay_trains_on_bone_crops_and_validates_the_whole_pipeline(pengwin_root):
    save_localiser(pengwin_root)
    parser = recipe_parser(pengwin_root, "train_two_stage.json")
    parser["train#augmentation"] = []
    crops = parser.get_parsed_content("train#dataset")[0]
    assert isinstance(crops, list) and 1 <= len(crops) <= 3  # one per bone of the view
    assert all(crop["label"].shape == (MAIN_OTHER_CHANNELS, 32, 32) for crop in crops)
    assert parser.get_parsed_content("validate#dataset")[0]["label"].shape == (NUM_CHANNELS, 32, 32)  # whole views
    validation, pipeline = (parser.get_parsed_content(key) for key in ("validate#inferer", "pipeline_inferer"))
    assert isinstance(validation, TwoStageInferer) and not validation.fragment_inferer.flip_tta
    assert isinstance(pipeline, TwoStageInferer) and pipeline.fragment_inferer.flip_tta
    assert pipeline.localiser_inferer.flip_tta and pipeline.localiser is validation.localiser
    assert Path(parser.get_parsed_content("best_model_path")) == pengwin_root / "models" / "fragments" / "model.pt"
    for overlays in (("train_two_stage.json", "evaluate.json"), ("evaluate.json", "train_two_stage.json")):
        evaluation = recipe_parser(pengwin_root, *overlays).get_parsed_content("validate#inferer")
        assert isinstance(evaluation, TwoStageInferer) and evaluation.fragment_inferer.flip_tta  # either order


def test_two_stage_runs_the_vgg16_unet_in_both_stages(pengwin_root):
    parser = recipe_parser(pengwin_root, "train_vgg16.json", "train_two_stage.json")
    save_localiser(pengwin_root, parser)
    pipeline = parser.get_parsed_content("pipeline_inferer")
    with torch.inference_mode():
        logits = pipeline(torch.rand(1, 3, 32, 32), parser.get_parsed_content("network").eval())
    assert logits.shape == (1, MAIN_OTHER_CHANNELS, 32, 32)
    assert pipeline.fragment_inferer.spatial_size == (224, 224)  # the VGG16 U-Net's input size, crops included


@pytest.mark.parametrize("base", [("train.json",), ("inference.json",)])
def test_two_stage_without_a_trained_localiser_names_the_setting(pengwin_root, base):
    overlay = "train_two_stage.json" if base == ("train.json",) else "inference_two_stage.json"
    parser = recipe_parser(pengwin_root, overlay, base=base)
    with pytest.raises(RuntimeError) as raised:  # MONAI's wrapper; the command prints the root cause's line
        parser.get_parsed_content("localiser")
    assert isinstance(root_cause(raised.value), FileNotFoundError)
    assert str(root_cause(raised.value)).endswith("models/model.pt: checkpoint not found (train first, or set --localiser_dir)")


def test_two_stage_inference_overlay_runs_both_stages_with_the_inference_settings(pengwin_root):
    save_localiser(pengwin_root)
    parser = recipe_parser(pengwin_root, "inference_two_stage.json", base=("inference.json",))
    inferer = parser.get_parsed_content("segmenter#inferer")
    assert isinstance(inferer, TwoStageInferer)
    assert inferer.localiser_inferer is inferer.fragment_inferer is parser.get_parsed_content("inferer")
    assert Path(parser.get_parsed_content("ckpt_path")) == pengwin_root / "models" / "fragments" / "model.pt"
    assert inferer.localiser_sha256 == file_sha256(pengwin_root / "models" / "model.pt")


@pytest.mark.parametrize(
    "chosen_behind, given, refused",
    [("a" * 64, "b" * 64, True), ("a" * 64, "a" * 64, False), (None, "b" * 64, False), ("a" * 64, None, False)],
)
def test_the_fragment_network_is_refused_behind_another_localiser_than_its_choice_was_made_behind(
    chosen_behind, given, refused
):
    inferer = TwoStageInferer(torch.nn.Identity(), PengwinInferer(), PengwinInferer(), localiser_sha256=given)
    choice = {"two_stage": True, "localiser_sha256": chosen_behind}  # None: a choice of 0.14.4, or no model.pt
    if refused:
        with pytest.raises(ValueError, match=r"^models/fragments/model\.pt: its post-processing was chosen behind "
                                             r"another localiser \(model\.pt of SHA-256 aaaaaaaaaaaa\.\.\.\) than"):
            check_pipeline(choice, inferer, "models/fragments/model.pt")
    else:
        check_pipeline(choice, inferer, "models/fragments/model.pt")


@pytest.mark.slow
@pytest.mark.parametrize("overlays, channels", [(("train_seed.json",), NUM_CHANNELS)])
def test_recipe_trains_evaluates_and_infers_valid_submissions(tmp_path, overlays, channels):
    """The seed recipe end to end (the default's run is in test_training)."""
    common = ["--bundle_root", str(tmp_path), "--synthetic", TINY_SYNTHETIC, "--num_workers", "0"]
    overlay = "".join(f",'configs/{name}'" for name in overlays)
    train = bundle_run(
        "training", "--config_file", f"['configs/train.json'{overlay}]", *common,
        "--max_epochs", "2", "--batch_size", "2",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert state["final_conv.weight"].shape[0] == channels

    evaluate = bundle_run("--config_file", f"['configs/train.json','configs/evaluate.json'{overlay}]", *common)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    summary = json.loads((tmp_path / "eval/evaluation/summary.json").read_text())
    assert summary["num_images"] == 2 and 0.0 <= summary["fracture_iou"] <= 1.0

    images = tmp_path / "data/synthetic/train/input/images/x-ray"
    out = tmp_path / "predictions"
    infer = bundle_run(
        "--config_file", f"['configs/inference.json'{overlay}]", "--bundle_root", str(tmp_path),
        "--dataset_dir", str(images), "--output_dir", str(out), "--num_workers", "0",
    )  # fmt: skip
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert_valid_submissions(images, out, 64)


@pytest.mark.slow
def test_two_stage_recipe_trains_both_stages_evaluates_and_infers_valid_submissions(tmp_path):
    settings = {
        "bundle_root": str(tmp_path), "synthetic": ast.literal_eval(TINY_SYNTHETIC), "num_workers": 0,
        "max_epochs": 1, "batch_size": 2,
    }  # fmt: skip
    configs = {name: str(BUNDLE_ROOT / "configs" / name) for name in ("train.json", "train_two_stage.json", "evaluate.json")}
    for files in (["train.json"], ["train.json", "train_two_stage.json"]):  # the localiser, then the fragment network
        workflow = ConfigWorkflow(config_file=[configs[name] for name in files], workflow_type="train", **settings)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    assert {path.name for path in (tmp_path / "models" / "fragments").iterdir()} >= {"model.pt", "postprocessing.json"}
    choice = json.loads((tmp_path / "models" / "fragments" / "postprocessing.json").read_text())
    assert choice["two_stage"] and choice["localiser_sha256"] == file_sha256(tmp_path / "models" / "model.pt")

    evaluation = ConfigWorkflow(config_file=list(configs.values()), workflow_type=None, **settings)
    evaluation.initialize()
    evaluation.run()
    evaluation.finalize()
    assert json.loads((tmp_path / "eval/evaluation/summary.json").read_text())["num_images"] == 2

    images = tmp_path / "data/synthetic/train/input/images/x-ray"
    out = tmp_path / "predictions"
    infer = bundle_run(  # the one inference command of the two stages
        "--config_file", "['configs/inference.json','configs/inference_two_stage.json']", "--bundle_root", str(tmp_path),
        "--dataset_dir", str(images), "--output_dir", str(out), "--num_workers", "0",
    )  # fmt: skip
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert_valid_submissions(images, out, 64)
