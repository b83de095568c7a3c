"""The bundle's own Python that its configs call, one module per role; importable from the bundle folder only.

Roles: ``handlers``, ``inferers``, ``losses``, ``metrics``, ``networks``, ``postprocessing``, ``segmenter``,
``writers``, ``loading`` and ``flags``.
``python -m monai.bundle`` puts the bundle folder first on ``sys.path``, as in the MONAI model zoo, so this
package is never installed under its generic name; reusable library code is in the installed ``pengwin_xray``.
"""
