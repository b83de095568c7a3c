"""Load the bundle once, segment many X-rays: the warm Python API and the engine of the inference command.

``pengwin_xray.segment.load_segmenter("bundle")`` builds a :class:`Segmenter` from ``configs/inference.json``;
``segmenter.segment(path_or_array)`` returns a :class:`scripts.postprocessing.Segmentation`. The inference command
runs :class:`FolderInference` (the config's ``evaluator``) with the same segmenter: the network predicts in the main
thread while decoding, post-processing and writing of the previous image run in a background thread.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from custom_transforms.constants import check_min_component_size, check_threshold
from custom_transforms.io import check_xray_image, read_xray_image

from .postprocessing import Segmentation, segment_probabilities
from .writers import PredictionWriter

__all__ = ["Segmenter", "FolderInference"]

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
        threshold: probability threshold of the fragment masks (checked, as the writer checks it).
        min_component_size: smaller 8-connected components are dropped.
        device: where the network runs.
        image_size: the size ``image_preprocessing`` brings images to (``None``: their own), for the input checks.
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
        image_size: Sequence[int] | None = None,
    ) -> None:
        self.network = network
        self.image_preprocessing = image_preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.threshold = check_threshold(threshold)
        self.min_component_size = check_min_component_size(min_component_size)
        self.device = torch.device(device)
        self.image_size = image_size

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The inferer's logits ``[B, C, h, w]`` for a preprocessed batch ``[B, C_in, h, w]``."""
        with torch.inference_mode():
            return self.inferer(images.to(self.device), self.network)

    def fragment_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """One image's logits ``[C, h, w]`` to fragment probabilities ``[30, h, w]`` (sigmoid, fragment decoding)."""
        return self.postprocessing({"pred": logits})["pred"]

    def segment(self, image: str | os.PathLike | np.ndarray) -> Segmentation:
        """Segment one raw X-ray: a TIFF file or a float ``[H, W]`` array of transmitted intensities.

        Raises:
            TypeError: for anything else (a ``bytes`` path, ``None``...).
            ValueError: for a file or array that is no single-channel X-ray (named).
        """
        if isinstance(image, (str, os.PathLike)):
            raw = read_xray_image(image, image_size=self.image_size)
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            raw = check_xray_image(image, "image array", image_size=self.image_size)
        else:
            raise TypeError(f"image must be a file path (str or os.PathLike) or an [H, W] array, got "
                            f"{type(image).__name__}")
        network_input = self.image_preprocessing({"image": raw[None]})["image"]
        probs = self.fragment_probabilities(self.logits(torch.as_tensor(network_input)[None])[0])
        return segment_probabilities(probs, raw.shape, self.threshold, self.min_component_size)


class FolderInference:
    """The inference command's engine (the config's ``evaluator``): ``run()`` segments every batch of a DataLoader
    (keys ``image``, ``raw``, ``filename``) and writes each image's files.

    The network runs in the calling thread; fragment decoding, post-processing and writing run in one background
    thread, overlapping the network's next batch, with at most a few images waiting there. Failed writes are
    recorded by ``writer``; any other error stops the run after cancelling the images still waiting.

    Args:
        segmenter: the loaded pipeline.
        dataloader: batches of preprocessed images with their raw image and file name.
        writer: where each image's files go; its threshold and minimum component size must be the segmenter's.
    """

    def __init__(
        self, segmenter: Segmenter, dataloader: Iterable[Mapping[str, Any]], writer: PredictionWriter
    ) -> None:
        mine = (segmenter.threshold, segmenter.min_component_size)
        theirs = (writer.threshold, writer.min_component_size)
        if mine != theirs:
            raise ValueError(
                f"the writer's threshold and min_component_size {theirs} differ from the segmenter's {mine}"
            )
        self.segmenter, self.dataloader, self.writer = segmenter, dataloader, writer

    def _finish(self, logits: torch.Tensor, raw: Any, filename: str) -> None:
        self.writer.write(self.segmenter.fragment_probabilities(logits), raw, filename)

    def run(self) -> None:
        pending: deque[Future] = deque()
        background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pengwin-writer")
        try:
            for batch in tqdm(self.dataloader, desc="inference", unit="batch"):
                logits_batch = self.segmenter.logits(batch["image"])
                for logits, raw, filename in zip(logits_batch, batch["raw"], batch["filename"]):
                    while len(pending) >= _MAX_PENDING_WRITES:
                        pending.popleft().result()
                    pending.append(background.submit(self._finish, logits, raw, filename))
            while pending:
                pending.popleft().result()
        finally:
            background.shutdown(cancel_futures=True)  # after an error, images still waiting are dropped
