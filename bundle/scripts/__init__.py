"""The bundle's own Python that is not a MONAI transform: networks, losses, metrics, writers and data tools."""
