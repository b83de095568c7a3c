"""``pengwin-mlflow-ui``: the MLflow UI over the bundle's runs, bound to this machine only unless asked otherwise."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from monai.utils import path_to_sqlite_uri

__all__ = ["ui_command", "main"]

#: the store ``train.json`` writes, relative to the bundle folder the command is started in
DEFAULT_STORE = Path("eval", "mlruns.db")


def ui_command(store: str | os.PathLike, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    """The ``mlflow ui`` command line for the SQLite store written by the bundle's configs.

    One worker by default: each MLflow worker holds about 0.7 GB, and one is plenty for a single user.
    """
    store = Path(store)
    if not store.is_file():
        raise FileNotFoundError(f"{store}: no MLflow store yet (train first, or pass --store)")
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    uri = path_to_sqlite_uri(str(store.resolve()))
    return [mlflow, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", str(workers)]


def main(argv: Sequence[str] | None = None) -> None:
    """Replace this process with the MLflow UI (Ctrl-C stops it)."""
    parser = argparse.ArgumentParser(prog="pengwin-mlflow-ui", description=__doc__)
    parser.add_argument("--store", default=str(DEFAULT_STORE), help="SQLite store (default: eval/mlruns.db in the bundle folder you stand in)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind; 0.0.0.0 exposes the UI to the network")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        command = ui_command(args.store, args.host, args.port, args.workers)
    except FileNotFoundError as err:
        raise SystemExit(f"pengwin-mlflow-ui: {err}") from None
    print(f"MLflow UI on http://{args.host}:{args.port} ({args.store})", flush=True)
    os.execv(command[0], command)
