"""Synthetic PENGWIN Task 2 data for demos and tests; the rest of the project uses only the names exported here.

Inside: procedural phantoms (``phantom``), a cone-beam projector (``projector``) and the dataset writer
(``dataset``, also ``pengwin-synth``).
"""

from .dataset import ensure_synthetic_dataset, generate_dataset, main, render_from_ct

__all__ = ["ensure_synthetic_dataset", "generate_dataset", "render_from_ct", "main"]
