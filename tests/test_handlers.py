"""Checkpoint writing through ignite's public ``Checkpoint``, the bundle's ``ReplacingDiskSaver`` and ``RandomStates``."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.transforms import Compose, RandAffined, RandGaussianNoised

from scripts.handlers import RandomStates, ReplacingDiskSaver, RunIdentity
from scripts.loading import lock_training, warn_replacing_best_model


def _fixed_name_checkpoint(folder, network, score=None) -> Checkpoint:
    """A ``model.pt`` checkpoint as ``train.json`` builds it (best model when ``score`` is given)."""
    return Checkpoint(
        {"model": network},
        ReplacingDiskSaver(folder),
        score_function=score,
        filename_pattern="model.pt",
        n_saved=1,
    )


def _run_epochs(handler, epochs: int) -> Engine:
    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, handler)
    engine.run([0], max_epochs=epochs)
    return engine


def test_ignite_still_removes_the_file_it_is_about_to_write(tmp_path):
    """Why ReplacingDiskSaver exists: if ignite stops calling ``remove`` on the file it then rewrites, it can go."""
    calls = []

    class RecordingSaver(ReplacingDiskSaver):
        def remove(self, filename: str) -> None:
            calls.append(("remove", filename, (tmp_path / filename).exists()))

        def __call__(self, checkpoint, filename, metadata=None) -> None:
            calls.append(("save", filename, (tmp_path / filename).exists()))
            super().__call__(checkpoint, filename, metadata)

    checkpoint = Checkpoint({"model": torch.nn.Linear(2, 2)}, RecordingSaver(tmp_path), filename_pattern="model.pt")
    _run_epochs(checkpoint, 2)
    assert calls == [("save", "model.pt", False), ("remove", "model.pt", True), ("save", "model.pt", True)]


def test_a_fixed_name_checkpoint_is_replaced_and_never_missing(tmp_path):
    network = torch.nn.Linear(2, 2)
    _run_epochs(_fixed_name_checkpoint(tmp_path, network), 3)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt"]
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == {"weight", "bias"}  # a plain state dict, as MONAI's CheckpointLoader and the bundle read


def test_a_save_that_dies_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    network = torch.nn.Linear(2, 2)
    checkpoint = _fixed_name_checkpoint(tmp_path, network)
    engine = _run_epochs(checkpoint, 1)
    good = (tmp_path / "model.pt").read_bytes()

    def dying_save(obj, file, **kwargs):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with torch.no_grad():
        network.weight.add_(1.0)
    engine.state.iteration += 1  # a later step, so the checkpoint does write again
    with pytest.raises(KeyboardInterrupt):
        checkpoint(engine)
    assert (tmp_path / "model.pt").read_bytes() == good
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.parametrize("scores, saved_epochs", [((0.2, 0.5, 0.4), (1, 2)), ((0.5, 0.5, 0.1), (1,))])
def test_the_best_model_is_written_only_when_the_score_improves(tmp_path, scores, saved_epochs):
    network = torch.nn.Linear(1, 1, bias=False)
    written = []

    def score(engine: Engine) -> float:
        return scores[engine.state.epoch - 1]

    def train_step(engine: Engine, batch) -> None:
        with torch.no_grad():
            network.weight.fill_(float(engine.state.epoch))

    engine = Engine(train_step)
    engine.add_event_handler(Events.EPOCH_COMPLETED, _fixed_name_checkpoint(tmp_path, network, score))
    engine.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda e: written.append(torch.load(tmp_path / "model.pt", weights_only=True)["weight"].item()),
    )
    engine.run([0], max_epochs=len(scores))
    assert written[-1] == float(saved_epochs[-1])
    assert sorted(set(written)) == [float(epoch) for epoch in saved_epochs]


def _augmentation() -> Compose:
    return Compose([RandAffined("image", prob=1.0, rotate_range=0.3), RandGaussianNoised("image", prob=0.5)])


def _draws(transform: Compose) -> list[torch.Tensor]:
    image = {"image": torch.arange(64, dtype=torch.float32).reshape(1, 8, 8)}
    return [transform(image)["image"].as_tensor() for _ in range(3)] + [torch.rand(3), torch.from_numpy(np.random.rand(3))]


def test_random_states_bring_back_every_draw_of_transforms_and_global_generators():
    transform = _augmentation().set_random_state(0)
    states = RandomStates(transform)
    assert len(states.transforms) == 6  # Compose, RandAffined, RandAffine, RandAffineGrid, noise dict + array
    saved = torch.load(io.BytesIO(_saved_bytes(states.state_dict())), weights_only=True)  # as checkpoint.pt holds it
    first = _draws(transform)
    fresh = _augmentation().set_random_state(123)  # a resumed run: other seeds until the states are loaded
    RandomStates(fresh).load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(first, _draws(fresh)))


def test_random_states_refuse_a_checkpoint_of_other_transforms():
    saved = RandomStates(_augmentation()).state_dict()
    with pytest.raises(ValueError, match="holds 6 random transform states, this training has 1"):
        RandomStates(Compose([])).load_state_dict(saved)


def _saved_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _identity(tmp_path, run_name="run-a", generated_by=None, **settings) -> RunIdentity:
    items = []
    for name in ("001_0000.tif", "002_0000.tif"):
        if not (tmp_path / name).exists():
            (tmp_path / name).write_bytes(b"image")
        items.append({"image": str(tmp_path / name)})
    return RunIdentity(run_name, items, {"learning_rate": 1e-3, "max_epochs": 40, **settings}, generated_by)


def test_generated_data_written_again_by_the_same_settings_is_the_same_data(tmp_path):
    generator = {"patients": 12, "projections": 8, "size": 128, "seed": 0}
    saved = _identity(tmp_path, generated_by=generator).state_dict()
    os.utime(tmp_path / "001_0000.tif", ns=(1, 1))  # generated again: the same bytes in newer files
    _identity(tmp_path, generated_by=generator).load_state_dict(saved)  # no error
    with pytest.raises(ValueError, match="with other data"):
        _identity(tmp_path, generated_by={**generator, "seed": 1}).load_state_dict(saved)
    on_disk = _identity(tmp_path).state_dict()  # a user's files: their sizes and times count
    os.utime(tmp_path / "001_0000.tif", ns=(2, 2))
    with pytest.raises(ValueError, match="with other data"):
        _identity(tmp_path).load_state_dict(on_disk)


def test_a_resume_with_the_same_data_and_settings_is_accepted_even_with_a_longer_budget(tmp_path):
    saved = _identity(tmp_path).state_dict()
    _identity(tmp_path, run_name="run-b", max_epochs=100, max_minutes=30).load_state_dict(saved)  # no error
    with pytest.raises(ValueError, match="other settings"):  # whereas a setting that shapes the model counts
        _identity(tmp_path, run_name="run-b", max_epochs=100, learning_rate=1e-4).load_state_dict(saved)


@pytest.mark.parametrize(
    "change, message",
    [("settings", r"with other settings \(learning_rate 0.001 there, 0.0001 here\)"), ("data", "with other data")],
)
def test_a_resume_of_other_data_or_settings_is_refused_naming_the_run(tmp_path, change, message):
    saved = _identity(tmp_path).state_dict()
    if change == "settings":
        resumed = _identity(tmp_path, learning_rate=1e-4)
    else:
        (tmp_path / "002_0000.tif").write_bytes(b"another image")
        resumed = _identity(tmp_path)
    with pytest.raises(ValueError, match=f"written by run run-a {message}; resuming it would mix two trainings"):
        resumed.load_state_dict(saved)


def test_a_refused_resume_names_each_setting_that_differs_with_both_values(tmp_path):
    saved = _identity(tmp_path, batch_size=8, seed=0).state_dict()
    with pytest.raises(ValueError, match=r"other settings \(batch_size 8 there, 4 here; seed 0 there, 1 here\);"):
        _identity(tmp_path, batch_size=4, seed=1).load_state_dict(saved)
    torch.load(io.BytesIO(_saved_bytes({"run": saved})), weights_only=True)  # stays loadable as plain values


def test_check_resume_refuses_a_checkpoint_of_another_network_naming_the_tensor(tmp_path):
    identity = _identity(tmp_path)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 2, 1))
    torch.save({"run": identity.state_dict(), "model": network.state_dict()}, tmp_path / "checkpoint.pt")
    identity.check_resume(str(tmp_path / "checkpoint.pt"), saved={"run": identity, "model": network})
    wider = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Conv2d(8, 2, 1))
    refusal = r"checkpoint.pt: its model is not this network \(0.weight \[4, 1, 3, 3\] there, \[8, 1, 3, 3\] here\): "
    with pytest.raises(ValueError, match=refusal + "it was trained with another network_def"):
        identity.check_resume(str(tmp_path / "checkpoint.pt"), saved={"run": identity, "model": wider})
    with pytest.raises(ValueError, match="its model is not this network \\(1.bias is not in this network\\)"):
        identity.check_resume(str(tmp_path / "checkpoint.pt"), saved={"model": torch.nn.Sequential(network[0])})


def test_check_resume_reads_the_checkpoint_and_names_it(tmp_path):
    identity = _identity(tmp_path)
    torch.save({"run": identity.state_dict(), "model": {}}, tmp_path / "checkpoint.pt")
    identity.check_resume(str(tmp_path / "checkpoint.pt"))
    torch.save({"model": {}}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="old.pt: no run identity"):
        identity.check_resume(str(tmp_path / "old.pt"))
    with pytest.raises(ValueError, match="checkpoint.pt: the checkpoint to resume was written by run run-a"):
        _identity(tmp_path, learning_rate=1.0).check_resume(str(tmp_path / "checkpoint.pt"))
    identity.check_resume(str(tmp_path / "checkpoint.pt"), saved=["run", "model"])
    with pytest.raises(ValueError, match="checkpoint.pt: written by an older version without best_model; it cannot"):
        identity.check_resume(str(tmp_path / "checkpoint.pt"), saved=["run", "model", "best_model"])
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes((tmp_path / "checkpoint.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="damaged.pt: not a readable PyTorch file") as error:
        identity.check_resume(str(damaged))
    assert "\n" not in str(error.value)


def test_one_training_at_a_time_holds_the_models_folder(tmp_path):
    first = lock_training(tmp_path / "models")
    with pytest.raises(ValueError, match=f"another training \\(pid {os.getpid()}\\) is writing this folder"):
        lock_training(tmp_path / "models")
    first.close()  # the process ends: the lock goes with it
    lock_training(tmp_path / "models").close()


def test_a_new_training_says_it_will_replace_an_earlier_best_model(tmp_path, caplog):
    assert warn_replacing_best_model(tmp_path) is None and not caplog.text
    (tmp_path / "model.pt").write_bytes(b"weights")
    with caplog.at_level(logging.WARNING, logger="scripts.loading"):
        assert warn_replacing_best_model(tmp_path) == tmp_path / "model.pt"
    assert "model.pt (written " in caplog.text and "will be replaced by this training's best model" in caplog.text
