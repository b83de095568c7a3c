"""Post-processing chosen on validation images, and read back only for the model it was chosen for."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from monai.bundle import ConfigParser

from custom_transforms.constants import (
    DEFAULT_MIN_COMPONENT_SIZE,
    DEFAULT_SEED_THRESHOLD,
    DEFAULT_SPLIT_DEPTH,
    DEFAULT_THRESHOLD,
    TUNED_POSTPROCESSING_FILE,
    fragment_channel,
)
from custom_transforms import SplitOtherFragments
from scripts.inferers import PengwinInferer, TwoStageInferer
from helpers import BUNDLE_ROOT
from scripts.tuning import (
    DEFAULTS,
    MIN_COMPONENT_SIZES,
    RECORDS,
    SEED_THRESHOLDS,
    SPLIT_DEPTHS,
    THRESHOLDS,
    check_pipeline,
    choose_postprocessing,
    fragment_probabilities,
    recorded_training,
    tuned_postprocessing,
)


#: the (threshold, seed threshold) pairs of the grid: a seed threshold at or below the threshold would repeat seed 0
SEEDED_THRESHOLDS = [(t, s) for t in THRESHOLDS for s in SEED_THRESHOLDS if s == DEFAULT_SEED_THRESHOLD or s > t]


def _logit(probability: float) -> float:
    return float(torch.logit(torch.tensor(probability)))


def _validation_batch() -> dict[str, torch.Tensor]:
    """One image whose SA has a main fragment (rows 8..23) and a fragment 2 (rows 40..47)."""
    label = torch.zeros(1, 30, 64, 64)
    label[0, fragment_channel(1, 1), 8:24, 8:56] = 1
    label[0, fragment_channel(1, 2), 40:48, 8:56] = 1
    return {"image": torch.zeros(1, 1, 64, 64), "label": label}


class _WeakNetwork(torch.nn.Module):
    """Main/other logits: both fragments at probability 0.45 (lost at thresholds >= 0.5), 5-pixel specks at 0.9."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], 6, *x.shape[2:]), _logit(0.01))
        logits[:, 0, 8:24, 8:56] = _logit(0.45)
        logits[:, 1, 40:48, 8:56] = _logit(0.45)
        logits[:, 1, 58:59, 2:7] = _logit(0.9)  # a speck: another fragment that no label has
        return logits


def test_a_choice_for_another_file_than_model_pt_is_refused_and_keeps_model_pts(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "model.pt")
    choose_postprocessing(_WeakNetwork(), [_validation_batch()], PengwinInferer(), tmp_path / "model.pt")
    kept = (tmp_path / TUNED_POSTPROCESSING_FILE).read_text()
    torch.save({"model": {"weights": torch.ones(1)}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint.pt: the post-processing is chosen for a folder's model.pt"):
        choose_postprocessing(_WeakNetwork(), [_validation_batch()], PengwinInferer(), tmp_path / "checkpoint.pt")
    assert (tmp_path / TUNED_POSTPROCESSING_FILE).read_text() == kept


def test_a_model_file_replaced_while_its_choice_is_made_gets_no_choice(tmp_path):
    model_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, model_path)

    def batches():  # a training replaces model.pt while the validation images are scored
        yield _validation_batch()
        torch.save({"weights": torch.ones(1)}, model_path)

    with pytest.raises(ValueError, match="model.pt: the file changed while its post-processing was chosen"):
        choose_postprocessing(_WeakNetwork(), batches(), PengwinInferer(), model_path)
    assert not (tmp_path / TUNED_POSTPROCESSING_FILE).exists()


def test_choice_maximises_validation_fracture_iou_then_anatomy_and_is_written_beside_the_model(tmp_path):
    model_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, model_path)
    chosen = choose_postprocessing(
        _WeakNetwork(), [_validation_batch()], PengwinInferer(), model_path, use_clahe=False, flip_tta=False
    )
    # 0.3 and 0.4 find both fragments; a minimum size of 10 drops the speck, which only the anatomy IoU sees
    assert (chosen["threshold"], chosen["min_component_size"]) == (0.3, 10)
    assert chosen["validation_fracture_iou"] == pytest.approx(1.0) and chosen["num_validation"] == 1
    assert chosen["validation_anatomical_iou"] == pytest.approx(1.0)
    assert chosen["default_validation_fracture_iou"] == pytest.approx(0.5)  # the never-empty fallback: main only
    # nothing to split: every depth and seed threshold scores the same, the first is kept
    assert (chosen["split_depth"], chosen["seed_threshold"]) == (0.0, 0.0)
    assert len(chosen["grid"]) == len(SEEDED_THRESHOLDS) * len(MIN_COMPONENT_SIZES) * len(SPLIT_DEPTHS)
    assert json.loads((tmp_path / TUNED_POSTPROCESSING_FILE).read_text()) == chosen
    assert set(chosen) == set(DEFAULTS) | set(RECORDS)  # every key it writes is one it reads back
    assert tuned_postprocessing(model_path) == {
        "threshold": 0.3,
        "min_component_size": 10,
        "split_depth": 0.0,
        "seed_threshold": 0.0,
        "image_size": [64, 64],  # the validation images': the scale inference brings other inputs to
        "two_stage": False,  # chosen behind a plain network call
        "use_clahe": False,  # the model's input, which inference and evaluation then give it by default
        "flip_tta": False,
        "localiser_sha256": None,  # no localiser in front of it
    }


def test_choice_records_no_image_size_when_validation_images_differ_in_size(tmp_path):
    model_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, model_path)
    smaller = {"image": torch.zeros(1, 1, 32, 32), "label": torch.zeros(1, 30, 32, 32)}
    smaller["label"][0, fragment_channel(1, 1), 8:24, 8:24] = 1
    chosen = choose_postprocessing(_WeakNetwork(), [_validation_batch(), smaller], PengwinInferer(), model_path)
    assert chosen["image_size"] is None and tuned_postprocessing(model_path)["image_size"] is None


class _MergingNetwork(torch.nn.Module):
    """Main/other logits: SA's main fragment, and its fragments 2 and 3 as one blob, two squares joined by a neck."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], 6, *x.shape[2:]), _logit(0.01))
        logits[:, 0, 2:10, 8:56] = _logit(0.9)
        logits[:, 1, 20:40, 8:28] = _logit(0.9)
        logits[:, 1, 20:40, 30:50] = _logit(0.9)
        logits[:, 1, 29:31, 28:30] = _logit(0.9)  # the neck, two pixels wide
        return logits


def _merged_batch() -> dict[str, torch.Tensor]:
    label = torch.zeros(1, 30, 64, 64)
    label[0, fragment_channel(1, 1), 2:10, 8:56] = 1
    label[0, fragment_channel(1, 2), 20:40, 8:29] = 1
    label[0, fragment_channel(1, 3), 20:40, 29:50] = 1
    return {"image": torch.zeros(1, 1, 64, 64), "label": label}


def test_choice_splits_fragments_the_network_merges_at_a_neck(tmp_path):
    model_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, model_path)
    chosen = choose_postprocessing(_MergingNetwork(), [_merged_batch()], PengwinInferer(), model_path)
    assert chosen["split_depth"] > 0
    assert chosen["validation_fracture_iou"] > 0.9 > chosen["default_validation_fracture_iou"]


class _DoubtfulMiddleNetwork(torch.nn.Module):
    """Main/other logits: SA's main fragment, and its fragments 2 and 3 as one 20 x 42 bar without a neck: two
    confident halves (0.95) joined by two columns the network doubts (0.75)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], 6, *x.shape[2:]), _logit(0.01))
        logits[:, 0, 2:10, 8:56] = _logit(0.9)
        logits[:, 1, 20:40, 8:50] = _logit(0.95)
        logits[:, 1, 20:40, 28:30] = _logit(0.75)
        return logits


def test_choice_grows_fragments_from_confident_cores_where_no_neck_parts_them(tmp_path):
    model_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, model_path)
    chosen = choose_postprocessing(_DoubtfulMiddleNetwork(), [_merged_batch()], PengwinInferer(), model_path)
    assert chosen["seed_threshold"] in (0.8, 0.9)
    assert chosen["validation_fracture_iou"] > 0.9 > chosen["default_validation_fracture_iou"]
    unseeded = [entry["fracture_iou"] for entry in chosen["grid"] if entry["seed_threshold"] == 0.0]
    assert max(unseeded) < 0.9  # neither a threshold nor a split depth parts the bar


def test_choice_labels_each_image_once_per_threshold_split_depth_and_seed_threshold(tmp_path, monkeypatch):
    calls = []
    label_others = SplitOtherFragments.label_others

    def counted(self, img):
        calls.append((self.threshold, self.split_depth, self.seed_threshold))
        return label_others(self, img)

    monkeypatch.setattr(SplitOtherFragments, "label_others", counted)
    model_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, model_path)
    chosen = choose_postprocessing(_MergingNetwork(), [_merged_batch()], PengwinInferer(), model_path)
    assert sorted(calls) == sorted((t, d, s) for t, s in SEEDED_THRESHOLDS for d in SPLIT_DEPTHS)
    assert chosen["split_depth"] > 0  # the same choice as when every setting labels anew


def test_slot_networks_are_tuned_without_split_depths(tmp_path):
    class Slots(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 30, *x.shape[2:]), _logit(0.9))

    model_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, model_path)
    chosen = choose_postprocessing(Slots(), [_validation_batch()], PengwinInferer(), model_path)
    assert {entry["split_depth"] for entry in chosen["grid"]} == {DEFAULT_SPLIT_DEPTH}
    assert {entry["seed_threshold"] for entry in chosen["grid"]} == {DEFAULT_SEED_THRESHOLD}
    assert len(chosen["grid"]) == len(THRESHOLDS) * len(MIN_COMPONENT_SIZES)


def test_a_choice_written_before_split_depths_seed_thresholds_and_image_size_reads_their_defaults(tmp_path):
    model_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, model_path)
    chosen = choose_postprocessing(_WeakNetwork(), [_validation_batch()], PengwinInferer(), model_path)
    del chosen["split_depth"], chosen["seed_threshold"], chosen["image_size"]
    (tmp_path / TUNED_POSTPROCESSING_FILE).write_text(json.dumps(chosen))
    settings = tuned_postprocessing(model_path)
    assert (settings["split_depth"], settings["seed_threshold"]) == (DEFAULT_SPLIT_DEPTH, DEFAULT_SEED_THRESHOLD)
    assert settings["image_size"] is None  # unknown: inference runs the network at each input's size


def test_settings_fall_back_to_the_defaults_without_a_choice_or_for_another_model(tmp_path, caplog):
    model_path = tmp_path / "model.pt"
    defaults = {
        "threshold": DEFAULT_THRESHOLD,
        "min_component_size": DEFAULT_MIN_COMPONENT_SIZE,
        "split_depth": DEFAULT_SPLIT_DEPTH,
        "seed_threshold": DEFAULT_SEED_THRESHOLD,
        "image_size": None,
        "two_stage": False,
        "use_clahe": True,
        "flip_tta": True,
        "localiser_sha256": None,
    }
    assert tuned_postprocessing(model_path) == defaults
    torch.save({"weights": torch.zeros(1)}, model_path)
    choose_postprocessing(_WeakNetwork(), [_validation_batch()], PengwinInferer(), model_path)
    torch.save({"weights": torch.ones(1)}, model_path)  # a newer model.pt, trained after the choice
    with caplog.at_level(logging.WARNING):
        assert tuned_postprocessing(model_path) == defaults
    assert caplog.text.count("chosen for another model than model.pt") == 1
    torch.save({"weights": torch.zeros(1)}, tmp_path / "checkpoint.pt")  # the same weights, another file
    choose_postprocessing(_WeakNetwork(), [_validation_batch()], PengwinInferer(), model_path)
    assert tuned_postprocessing(model_path)["threshold"] == 0.3
    assert tuned_postprocessing(tmp_path / "model.onnx")["threshold"] == 0.3  # an export shares model.pt's choice
    assert tuned_postprocessing(tmp_path / "checkpoint.pt") == defaults


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{bad", r"not JSON: Expecting property name"),
        ("[1, 2]", r"a JSON list"),
        ("null", r"a JSON NoneType"),
        ({"threshold": 5}, r"threshold must be a probability strictly between 0 and 1, got 5"),
        ({"localiser_sha256": "abc"}, r"localiser_sha256 must be a SHA-256 digest \(64 hex digits\) or null"),
        ({"treshold": 0.7}, r"no setting \['treshold'\] in a post-processing choice \(misspelt\?\)"),
    ],
)
def test_a_damaged_or_hand_edited_choice_is_one_line_naming_the_file(tmp_path, content, problem):
    model_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, model_path)
    chosen = choose_postprocessing(_WeakNetwork(), [_validation_batch()], PengwinInferer(), model_path)
    path = tmp_path / TUNED_POSTPROCESSING_FILE
    path.write_text(json.dumps({**chosen, **content}) if isinstance(content, dict) else content)
    with pytest.raises(ValueError, match=f"^{path}: .*{problem}.*; remove the file, then choose again") as error:
        tuned_postprocessing(model_path)
    assert "\n" not in str(error.value)


def test_the_choice_records_what_its_model_was_trained_on_and_only_its_model_reads_it(tmp_path):
    model_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, model_path)
    assert recorded_training(model_path) is None  # no choice yet
    trained_on = {"dataset": "/data", "sources": ["patient 001", "patient 002"]}
    choose_postprocessing(_WeakNetwork(), [_validation_batch()], PengwinInferer(), model_path, trained_on=trained_on)
    assert recorded_training(model_path) == trained_on
    assert recorded_training(tmp_path / "model.onnx") == trained_on  # an export's is its model.pt's
    torch.save({"weights": torch.ones(1)}, model_path)  # retrained since: the record is another model's
    assert recorded_training(model_path) is None


def test_choosing_again_keeps_the_input_flip_tta_and_training_data_the_earlier_choice_recorded(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    torch.save({"weights": torch.zeros(1)}, models / "model.pt")
    trained_on = {"dataset": "/the/training/data", "sources": ["patient 001"]}
    choose_postprocessing(_WeakNetwork(), [_validation_batch()], PengwinInferer(), models / "model.pt",
                          use_clahe=False, flip_tta=False, trained_on=trained_on)  # fmt: skip
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / name) for name in ("train.json", "choose_postprocessing.json")])
    parser.update({"bundle_root": str(tmp_path)})
    assert parser.get_parsed_content("use_clahe") is False and parser.get_parsed_content("flip_tta") is False
    assert parser.get_parsed_content("pipeline_inferer").flip_tta is False
    assert parser.get_parsed_content("trained_on") == trained_on  # not the data this choice happens to run on
    (models / TUNED_POSTPROCESSING_FILE).unlink()  # no earlier choice: the defaults
    assert parser.get_parsed_content("use_clahe", lazy=False) is True


@pytest.mark.parametrize("channels, split", [(30, False), (6, True), (9, True)])
def test_fragment_probabilities_follow_the_formulation_the_channel_count_tells(channels, split):
    probs = torch.zeros(channels, 16, 16)
    probs[1, 2:6, 2:6] = 0.9  # slots: SA fragment 2; main/other(/rim): SA other fragments
    fragments = fragment_probabilities(probs, 0.5, 1)
    assert fragments.shape == (30, 16, 16)
    expected = torch.zeros(30, 16, 16)
    expected[fragment_channel(1, 2), 2:6, 2:6] = 0.9  # the slot itself, or the other mask's one component
    assert torch.equal(fragments, expected)
    with pytest.raises(ValueError, match="expected 6, 9 or 30 output channels, got 4"):
        fragment_probabilities(torch.zeros(4, 8, 8), 0.5, 1)


def test_the_two_stage_fragment_network_is_refused_without_its_localiser(tmp_path):
    """Its choice records the two stages; alone, the crop network would segment whole views it never learned."""
    model_path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, model_path)
    localiser = _WeakNetwork()
    two_stage = TwoStageInferer(localiser, PengwinInferer(), PengwinInferer())
    choose_postprocessing(_WeakNetwork(), [_validation_batch()], two_stage, model_path)
    choice = tuned_postprocessing(model_path)
    assert choice["two_stage"] is True
    check_pipeline(choice, two_stage, model_path)
    with pytest.raises(ValueError, match=r"model\.pt: the fragment network of the two-stage recipe.*inference_two_stage"):
        check_pipeline(choice, PengwinInferer(), model_path)
    check_pipeline(tuned_postprocessing(tmp_path / "none" / "model.pt"), PengwinInferer(), model_path)  # no choice
