"""Load the bundle once, segment many X-rays: the warm Python API and the loop of the inference command.

``Segmenter.from_bundle("bundle")`` builds it from ``configs/inference.json`` (overrides as keyword arguments);
``segmenter.segment(path_or_array)`` returns a :class:`scripts.postprocessing.Segmentation`. The inference command
runs :meth:`Segmenter.segment_files`, where loading overlaps the network (DataLoader workers) and post-processing
and writing run in a background thread while the network predicts the next image.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from tqdm import tqdm

from custom_transforms.io import check_xray_image, read_xray_image

from .postprocessing import Segmentation, segment_probabilities
from .writers import PredictionWriter

__all__ = ["Segmenter"]

#: images whose post-processing and files may wait behind the network before it waits for them
_MAX_PENDING_WRITES = 4


class Segmenter:
    """The bundle's network, preprocessing, inferer and post-processing, loaded once.

    Args:
        network: the trained network in evaluation mode (any of the bundle's model formats).
        image_preprocessing: dictionary transform of ``{"image": raw [1, H, W]}`` to the network input.
        inferer: the bundle's inferer (input size, flip TTA, CPU bf16).
        postprocessing: dictionary transform of ``{"pred": logits [C, h, w]}`` to fragment probabilities
            ``[30, h, w]`` (sigmoid, then the formulation's fragment decoding).
        threshold: probability threshold of the fragment masks.
        min_component_size: smaller 8-connected components are dropped.
        device: where the network runs.
    """

    def __init__(
        self,
        network: Callable[[torch.Tensor], torch.Tensor],
        image_preprocessing: Callable[[dict], Mapping[str, Any]],
        inferer: Callable[..., torch.Tensor],
        postprocessing: Callable[[dict], Mapping[str, Any]],
        threshold: float,
        min_component_size: int,
        device: str | torch.device = "cpu",
    ) -> None:
        self.network = network
        self.image_preprocessing = image_preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.threshold = threshold
        self.min_component_size = min_component_size
        self.device = torch.device(device)

    @classmethod
    def from_bundle(cls, bundle_root: str | os.PathLike = ".", **overrides: Any) -> Segmenter:
        """The ``segmenter`` of ``<bundle_root>/configs/inference.json``, with config ``overrides`` (e.g.
        ``model_format="onnx"``); the bundle's ``scripts`` become importable, as ``python -m monai.bundle`` makes
        them."""
        root = Path(bundle_root).resolve()
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / "inference.json"))
        parser["bundle_root"] = str(root)
        for key, value in overrides.items():
            parser[key] = value
        return parser.get_parsed_content("segmenter")

    def predict(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Fragment probabilities ``[30, h, w]`` of each image of a preprocessed batch ``[B, C, h, w]``."""
        with torch.inference_mode():
            logits = self.inferer(images.to(self.device), self.network)
        return [self.postprocessing({"pred": item})["pred"] for item in logits]

    def segment(self, image: str | os.PathLike | np.ndarray) -> Segmentation:
        """Segment one raw X-ray: a TIFF file or a float ``[H, W]`` array of transmitted intensities."""
        if isinstance(image, (str, os.PathLike)):
            raw = read_xray_image(image)
        else:
            raw = check_xray_image(image, "image array")
        network_input = self.image_preprocessing({"image": raw[None]})["image"]
        (probs,) = self.predict(torch.as_tensor(network_input)[None])
        return segment_probabilities(probs, raw.shape, self.threshold, self.min_component_size)

    def segment_files(self, batches: Iterable[Mapping[str, Any]], writer: PredictionWriter) -> None:
        """Segment every batch of a DataLoader (keys ``image``, ``raw``, ``filename``) and write each image's files.

        Post-processing and writing run in one background thread, so that they overlap the network's next batch;
        at most a few images wait there. Failed writes are recorded by ``writer``.
        """
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pengwin-writer") as background:
            for batch in tqdm(batches, desc="inference", unit="batch"):
                for probs, raw, filename in zip(self.predict(batch["image"]), batch["raw"], batch["filename"]):
                    while len(pending) >= _MAX_PENDING_WRITES:
                        pending.popleft().result()
                    pending.append(background.submit(writer.write, probs, raw, filename))
            while pending:
                pending.popleft().result()
