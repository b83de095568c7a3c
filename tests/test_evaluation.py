"""The official metrics inside ignite engines: the fracture IoU key metric and the metrics saver."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import from_engine

from custom_transforms import fragment_channel
from scripts.handlers import OfficialMetricsSaver
from scripts.metrics import FractureIoU


def _label() -> torch.Tensor:
    masks = torch.zeros(30, 40, 40)
    masks[fragment_channel(1, 1), :20] = 1
    masks[fragment_channel(1, 2), 30:32, 30:32] = 1  # a 4-pixel chip: 0.25% of the image
    return masks


def _prediction() -> torch.Tensor:
    """The main fragment found in a wrong slot (slots carry no meaning for the metric), the chip missed."""
    masks = torch.zeros(30, 40, 40)
    masks[fragment_channel(2, 5), :20] = 1
    return masks


def _engine(batches: list[list[dict]], *handlers) -> Engine:
    engine = Engine(lambda engine, batch: batch)
    for handler in handlers:
        handler.attach(engine) if isinstance(handler, OfficialMetricsSaver) else handler.attach(engine, "fracture_iou")
    engine.run(batches, max_epochs=1)
    return engine


def test_fracture_iou_metric_is_the_image_mean_of_the_official_score():
    items = [{"pred": _prediction(), "label": _label()}, {"pred": _label(), "label": _label()}]
    engine = _engine([items[:1], items[1:]], FractureIoU(output_transform=from_engine(["pred", "label"])))
    assert engine.state.metrics["fracture_iou"] == pytest.approx((0.5 + 1.0) / 2)


def test_fracture_iou_metric_on_nothing_is_a_clear_error():
    metric = FractureIoU()
    with pytest.raises(ValueError, match="validation split is empty"):
        metric.compute()


def test_metrics_saver_writes_official_means_and_iou_by_fragment_size(tmp_path):
    items = [
        {"prob": _prediction() * 0.9, "label": _label()},
        {"prob": _label() * 0.9, "label": _label()},
    ]
    saver = OfficialMetricsSaver(str(tmp_path), threshold=0.5, min_component_size=1)
    engine = _engine([items], saver)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_images"] == 2 and engine.state.metrics["fracture_iou"] == pytest.approx(0.75)
    assert summary["fracture_iou_under_0.5pct"] == pytest.approx(0.5)  # the chip: missed once, found once
    assert summary["num_fragments_under_0.5pct"] == 2 and summary["num_fragments_over_5pct"] == 2
    assert summary["fracture_iou_over_5pct"] == pytest.approx(1.0)
    assert summary["fracture_iou_1_5pct"] is None


def test_an_evaluation_that_fails_leaves_no_earlier_results_to_pass_for_its_own(tmp_path):
    for name in ("metrics.csv", "summary.json"):
        (tmp_path / name).write_text("from an earlier evaluation")
    broken = [{"prob": torch.zeros(6, 4, 4), "label": _label()}]  # not [30, H, W] probabilities
    with pytest.raises(ValueError, match="expected probabilities of shape"):
        _engine([broken], OfficialMetricsSaver(str(tmp_path)))
    assert not list(tmp_path.iterdir())
