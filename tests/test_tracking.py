"""The MLflow UI command: the bundle's store, served on this machine only unless the user asks otherwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from monai.utils import path_to_sqlite_uri

from pengwin_xray.tracking import main, ui_command
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


def test_the_command_defaults_to_the_store_of_the_bundle_it_is_started_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="^pengwin-mlflow-ui: eval/mlruns.db: no MLflow store yet"):  # one line
        main([])


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="needs Linux /proc/net/tcp to see bound addresses")
def test_ui_serves_the_store_on_loopback_only(tmp_path):
    store = tmp_path / "mlruns.db"
    mlflow.MlflowClient(path_to_sqlite_uri(str(store))).create_experiment("pengwin-xray")
    port = free_port()
    ui = subprocess.Popen(
        [str(Path(sys.executable).parent / "pengwin-mlflow-ui"), "--store", str(store), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=pengwin-xray"
                with urllib.request.urlopen(url, timeout=2) as response:
                    experiment = json.loads(response.read())["experiment"]
                break
            except OSError:
                assert ui.poll() is None and time.time() < deadline, "MLflow UI did not start"
                time.sleep(0.5)
        assert experiment["name"] == "pengwin-xray"
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
