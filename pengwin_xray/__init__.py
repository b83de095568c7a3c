"""The PENGWIN library shared by the bundle's scripts and the console commands, installed under its own name.

Data layout and datalists, official metrics, dataset fingerprint, synthetic data generator, MLflow UI and
atomic file writing.

It is installed under this project's own name, so that it collides with no other package; the bundle's
``scripts`` package is importable from the bundle folder only, as in the MONAI model zoo.
"""
