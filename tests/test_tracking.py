"""The MLflow UI command: the bundle's store, served on this machine only unless the user asks otherwise."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from monai.networks.nets import BasicUNet
from monai.utils import path_to_sqlite_uri
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from pengwin_xray.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING,
    log_trained_model,
    main,
    prepare_experiment,
    ui_command,
)
from helpers import free_port


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses (hex, as in /proc/net/tcp) with a socket listening on ``port``."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            addresses.add(address)
    return addresses


def test_ui_command_binds_loopback_by_default_and_needs_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MLflow store yet"):
        ui_command(tmp_path / "mlruns.db")
    (tmp_path / "mlruns.db").touch()
    command = ui_command(tmp_path / "mlruns.db")
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--backend-store-uri") + 1] == path_to_sqlite_uri(str(tmp_path / "mlruns.db"))
    assert ui_command(tmp_path / "mlruns.db", host="0.0.0.0")[command.index("--host") + 1] == "0.0.0.0"
    (tmp_path / "notes.db").write_text("not a database")
    with pytest.raises(SystemExit, match=r"^pengwin-mlflow-ui: .*notes\.db: not an SQLite database"):  # one line
        main(["--store", str(tmp_path / "notes.db")])


def test_the_command_defaults_to_the_store_of_the_bundle_it_is_started_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="^pengwin-mlflow-ui: eval/mlruns.db: no MLflow store yet"):  # one line
        main([])


def test_a_moved_store_is_named_with_where_its_artifacts_still_go(tmp_path, caplog):
    first, moved = tmp_path / "first" / "mlruns.db", tmp_path / "moved" / "mlruns.db"
    first.parent.mkdir()
    moved.parent.mkdir()
    prepare_experiment(path_to_sqlite_uri(str(first)), "pengwin-xray")
    shutil.copy(first, moved)
    def warnings() -> list[str]:
        ours = [record for record in caplog.records if record.name == "pengwin_xray.tracking"]
        return [record.getMessage() for record in ours if record.levelno >= logging.WARNING]

    with caplog.at_level(logging.WARNING, logger="pengwin_xray.tracking"):
        prepare_experiment(path_to_sqlite_uri(str(first)), "pengwin-xray")
        assert not warnings()  # in place: nothing to say
        prepare_experiment(path_to_sqlite_uri(str(moved)), "pengwin-xray")
    (warning,) = warnings()
    assert str(tmp_path / "first" / "mlruns") in warning and "use a new --experiment_name" in warning


def test_an_artifact_folder_that_is_a_file_is_refused_before_any_training(tmp_path):
    """MLflow would fail on it only when the run logs its first artifact, after the training."""
    uri = path_to_sqlite_uri(str(tmp_path / "mlruns.db"))
    (tmp_path / "mlruns").write_text("not a folder")
    for _ in range(2):  # a new experiment, then one the store already has
        with pytest.raises(ValueError, match=rf"^{tmp_path / 'mlruns'}: the MLflow artifact folder is a file"):
            prepare_experiment(uri, "pengwin-xray")
        (tmp_path / "mlruns").unlink()
        prepare_experiment(uri, "pengwin-xray")
        (tmp_path / "mlruns").write_text("not a folder")


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def ui_with_a_run(tmp_path_factory):
    """``pengwin-mlflow-ui`` on a store with one tiny training run and its registered model; yields the base
    address, the runs address the command printed, and the run."""
    folder = tmp_path_factory.mktemp("ui")
    store = folder / "eval" / "mlruns.db"
    store.parent.mkdir()
    uri = path_to_sqlite_uri(str(store))
    experiment_id = prepare_experiment(uri, "pengwin-xray")
    client = mlflow.MlflowClient(uri)
    run = client.create_run(experiment_id, run_name="tiny")
    for step, iou in enumerate((0.1, 0.2, 0.25), start=1):
        client.log_metric(run.info.run_id, "val_fracture_iou", iou, step=step)
    client.set_terminated(run.info.run_id)
    network = BasicUNet(2, 1, 6, features=(4, 4, 4, 4, 4, 4))
    torch.save(network.state_dict(), folder / "model.pt")
    example = np.zeros((1, 1, 32, 32), np.float32)
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    log_trained_model(uri, "pengwin-xray", "tiny", network, folder / "model.pt", example, "pengwin-xray-basicunet")
    assert os.environ.get("MLFLOW_TRACKING_URI") == environment  # nothing leaks to processes started later
    port = free_port()
    ui = subprocess.Popen(
        [str(Path(sys.executable).parent / "pengwin-mlflow-ui"), "--store", str(store), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        printed = ui.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                assert ui.poll() is None and time.time() < deadline, "MLflow UI did not start"
                time.sleep(0.5)
        yield base, printed.split("training runs: ")[1].strip(), run
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="needs Linux /proc/net/tcp to see bound addresses")
def test_ui_serves_the_store_on_loopback_only(ui_with_a_run):
    base, _, _ = ui_with_a_run
    url = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=pengwin-xray"
    with urllib.request.urlopen(url, timeout=10) as response:
        experiment = json.loads(response.read())["experiment"]
    assert experiment["name"] == "pengwin-xray"
    assert {"key": EXPERIMENT_KIND_TAG, "value": MODEL_TRAINING} in experiment["tags"]
    assert listening_addresses(int(base.rsplit(":", 1)[1])) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0


def chromium() -> webdriver.Chrome:
    """Headless Debian Chromium, with no network of its own (the machine has none to offer)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        message = "the browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: their absence there is a failure, not a reason to skip
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(service=webdriver.ChromeService(str(CHROMEDRIVER)), options=options)


@pytest.mark.slow
def test_browser_finds_the_run_under_model_training_with_its_iou_chart_and_registered_model(ui_with_a_run):
    _, runs_url, run = ui_with_a_run
    browser = chromium()
    wait = WebDriverWait(browser, 90)

    def page_text() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    try:
        browser.get(runs_url)  # the address pengwin-mlflow-ui printed
        wait.until(lambda _: browser.find_elements(By.LINK_TEXT, "tiny"))
        assert "Model registry" in page_text() and "Evaluation runs" not in page_text()  # the model-training view
        assert "pengwin-xray-basicunet" in page_text()  # the run's registered model, in its row
        browser.find_element(By.LINK_TEXT, "tiny").click()
        wait.until(lambda _: "Registered models" in page_text())
        assert "pengwin-xray-basicunet\nv1" in page_text()
        wait.until(lambda _: browser.find_elements(By.XPATH, "//*[text()='Model metrics']"))[0].click()
        chart = ("\nval_fracture_iou\n", "\nStep\n", "tiny (val_fracture_iou)")  # title, x axis and legend
        wait.until(lambda _: all(text in page_text() for text in chart))
    except TimeoutException:
        browser.save_screenshot(str(Path(os.environ.get("TMPDIR", "/tmp")) / "mlflow_ui_failure.png"))
        raise AssertionError(f"the MLflow UI page did not show what was expected; it showed: {page_text()[:2000]}")
    finally:
        browser.quit()
