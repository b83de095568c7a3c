"""Load the bundle once, segment many X-rays: the warm Python API and the loop of the inference command.

``pengwin_xray.segment.load_segmenter("bundle")`` builds it from ``configs/inference.json`` (overrides as keyword
arguments); ``segmenter.segment(path_or_array)`` returns a :class:`scripts.postprocessing.Segmentation`. The inference command
runs :meth:`Segmenter.segment_files`, where loading overlaps the network (DataLoader workers) and post-processing
and writing run in a background thread while the network predicts the next image.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
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

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The inferer's logits ``[B, C, h, w]`` for a preprocessed batch ``[B, C_in, h, w]``."""
        with torch.inference_mode():
            return self.inferer(images.to(self.device), self.network)

    def fragment_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """One image's logits ``[C, h, w]`` to fragment probabilities ``[30, h, w]`` (sigmoid, fragment decoding)."""
        return self.postprocessing({"pred": logits})["pred"]

    def segment(self, image: str | os.PathLike | np.ndarray) -> Segmentation:
        """Segment one raw X-ray: a TIFF file or a float ``[H, W]`` array of transmitted intensities."""
        if isinstance(image, (str, os.PathLike)):
            raw = read_xray_image(image)
        else:
            raw = check_xray_image(image, "image array")
        network_input = self.image_preprocessing({"image": raw[None]})["image"]
        probs = self.fragment_probabilities(self.logits(torch.as_tensor(network_input)[None])[0])
        return segment_probabilities(probs, raw.shape, self.threshold, self.min_component_size)

    def segment_files(self, batches: Iterable[Mapping[str, Any]], writer: PredictionWriter) -> None:
        """Segment every batch of a DataLoader (keys ``image``, ``raw``, ``filename``) and write each image's files.

        The network runs in this thread; fragment decoding, post-processing and writing run in one background
        thread, overlapping the network's next batch, with at most a few images waiting there. Failed writes are
        recorded by ``writer``.
        """

        def finish(logits: torch.Tensor, raw: Any, filename: str) -> None:
            writer.write(self.fragment_probabilities(logits), raw, filename)

        pending: deque[Future] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pengwin-writer") as background:
            for batch in tqdm(batches, desc="inference", unit="batch"):
                for logits, raw, filename in zip(self.logits(batch["image"]), batch["raw"], batch["filename"]):
                    while len(pending) >= _MAX_PENDING_WRITES:
                        pending.popleft().result()
                    pending.append(background.submit(finish, logits, raw, filename))
            while pending:
                pending.popleft().result()
