"""U-Net with a VGG16 encoder, the pretrained-encoder side of the BasicUNet / VGG16 U-Net comparison.

The encoder is VGG16's convolutional part in exactly the layout of ``torchvision.models.vgg16().features``
(same ``nn.Sequential`` indices for every convolution, ReLU and max pool, no batch norm), written in plain torch
because torchvision is not part of this stack. A torchvision ``vgg16`` state dict therefore loads into
``VGG16UNet.encoder.features`` key for key, from a local file only: nothing is downloaded.

MONAI's ``FlexibleUNet`` is not used: its registered encoders return at most five feature maps (1/2 .. 1/32 of
the input), so a VGG16 there would lose the full-resolution 64-channel skip, which is the feature map that
carries the finest fragment borders. MONAI's own U-Net blocks (``UpCat``, ``TwoConv``) build the decoder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from monai.networks.nets.basic_unet import UpCat
from torch import nn

from custom_transforms.constants import NUM_CHANNELS
from pengwin_xray.model_files import read_torch_file

__all__ = [
    "VGG16Encoder",
    "VGG16UNet",
    "load_vgg16_encoder_weights",
    "MAKE_VGG16_WEIGHTS",
]

#: VGG16 ("configuration D"): output channels of each 3x3 convolution, "M" for a 2x2 max pool.
_VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512
)
#: indices in ``features`` of the ReLU ending each level (full resolution, 1/2, 1/4, 1/8, 1/16): the skips.
_SKIP_INDICES: tuple[int, ...] = (3, 8, 15, 22, 29)
_SKIP_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)
#: the command that writes torchvision's ImageNet VGG16 weights to ``vgg16_imagenet.pt`` (needs internet)
MAKE_VGG16_WEIGHTS = (
    "python3 -m venv vgg16-env && vgg16-env/bin/pip install torch torchvision && vgg16-env/bin/python -c "
    "\"import torch, torchvision; torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(), "
    "'vgg16_imagenet.pt')\""
)
#: VGG16's input channels (RGB); the first convolution's weight in a pretrained file has this many.
_VGG16_IN_CHANNELS = 3
#: the encoder halves the size four times, so the input's height and width must divide by this.
SIZE_DIVISOR = 16


class VGG16Encoder(nn.Module):
    """The 13 convolutions of VGG16 in torchvision's ``vgg16().features`` layout, returning five skip maps.

    ``features`` holds indices 0..29 of torchvision's ``features``; its last max pool (index 30) only feeds
    VGG16's classifier and has no weights, so it is left out and the 1/16 level is the U-Net's bottleneck
    (the same size divisor as MONAI's BasicUNet).

    Args:
        in_channels: number of input channels.
    """

    def __init__(self, in_channels: int = _VGG16_IN_CHANNELS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.skip_indices: list[int] = list(_SKIP_INDICES)
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):  # torchvision's VGG initialisation, for training from scratch
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps at full resolution, 1/2, 1/4, 1/8 and 1/16 (64, 128, 256, 512, 512 channels)."""
        skips: list[torch.Tensor] = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.skip_indices:
                skips.append(x)
        return skips


class VGG16UNet(nn.Module):
    """2D U-Net whose encoder is VGG16 (optionally ImageNet-pretrained) and whose decoder is MONAI's ``UpCat``.

    Five levels: skips from the VGG16 features at full resolution (before the first max pool), 1/2, 1/4 and 1/8
    join the 1/16 bottleneck on the way up. Each decoder level upsamples bilinearly and applies two
    conv-BN-ReLU blocks to the concatenation; a 1x1 convolution gives ``out_channels`` logits at the input size.
    Bilinear upsampling rather than transposed convolution: it has no weights to learn from little data, makes
    no checkerboard artefacts, and the two convolutions that follow already mix the channels.

    Usable as a bundle ``network_def``: ``{"_target_": "scripts.networks.VGG16UNet", "pretrained_path": ...}``.

    Args:
        in_channels: input channels. With pretrained weights and ``in_channels != 3`` the first convolution is
            adapted as described in :func:`load_vgg16_encoder_weights`.
        out_channels: output logit channels (30 sigmoid channels for PENGWIN).
        pretrained_path: local file with torchvision VGG16 weights (see :func:`load_vgg16_encoder_weights`);
            ``None`` trains the encoder from scratch.
        decoder_channels: output channels of the four decoder levels, from 1/8 up to full resolution.
        freeze_encoder: start with the encoder frozen (see :meth:`set_encoder_trainable`).

    Raises:
        ValueError: bad channel numbers, or a weights file that is not a VGG16 state dict.
    """

    def __init__(
        self,
        in_channels: int = _VGG16_IN_CHANNELS,
        out_channels: int = NUM_CHANNELS,
        pretrained_path: str | os.PathLike | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32),
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != len(_SKIP_CHANNELS) - 1 or min(decoder_channels) < 1:
            levels = len(_SKIP_CHANNELS) - 1
            raise ValueError(f"decoder_channels needs {levels} positive values, got {decoder_channels}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.size_divisor: int = SIZE_DIVISOR
        self.encoder = VGG16Encoder(in_channels)
        blocks = []
        below = _SKIP_CHANNELS[-1]
        for skip_channels, channels in zip(reversed(_SKIP_CHANNELS[:-1]), decoder_channels):
            blocks.append(
                UpCat(
                    spatial_dims=2,
                    in_chns=below,
                    cat_chns=skip_channels,
                    out_chns=channels,
                    act="relu",
                    norm="batch",
                    bias=False,  # batch norm follows every convolution
                    upsample="nontrainable",
                    pre_conv=None,
                    interp_mode="bilinear",
                    align_corners=False,
                    is_pad=False,  # sizes divide by 16, checked in forward
                )
            )
            below = channels
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(below, out_channels, kernel_size=1)
        if pretrained_path is not None:
            self.load_encoder_weights(pretrained_path)
        if freeze_encoder:
            self.set_encoder_trainable(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, out_channels, H, W]`` for an input ``[B, in_channels, H, W]``, H and W divisible by 16."""
        divisor = self.size_divisor
        if not torch.jit.is_tracing() and (x.shape[-2] % divisor != 0 or x.shape[-1] % divisor != 0):
            raise ValueError(f"VGG16UNet needs height and width divisible by {divisor}, got {x.shape}")
        skips = self.encoder(x)
        x = skips[-1]
        for level, block in enumerate(self.decoder):
            x = block(x, skips[-2 - level])
        return self.head(x)

    def load_encoder_weights(self, path: str | os.PathLike) -> None:
        """Load torchvision VGG16 weights from ``path`` into the encoder (see :func:`load_vgg16_encoder_weights`)."""
        load_vgg16_encoder_weights(self, path)

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Freeze (``False``) or unfreeze (``True``) the encoder's weights.

        Freezing also drops the encoder's stored gradients so that an optimizer step cannot move frozen weights.
        The encoder has no batch norm, so train/eval mode needs no change.
        """
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(trainable)
            if not trainable:
                parameter.grad = None


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict saved with ``torch.save``, unwrapping a ``"state_dict"`` or ``"model"`` entry."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: VGG16 weights file not found (--vgg16_weights); make it once, on a machine with internet, in an "
            f"environment of its own (torchvision does not install beside this bundle's torch): {MAKE_VGG16_WEIGHTS}"
        )
    content = read_torch_file(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(content, Mapping) and isinstance(content.get(wrapper), Mapping):
            content = content[wrapper]
            break
    if not isinstance(content, Mapping) or not all(isinstance(value, torch.Tensor) for value in content.values()):
        raise ValueError(f"{path}: expected a mapping of parameter names to tensors, got {type(content).__name__}")
    broken = [name for name, value in content.items() if value.is_floating_point() and not value.isfinite().all()]
    if broken:
        raise ValueError(f"{path}: weights with NaN or infinite values ({', '.join(broken[:3])}): not usable weights")
    return dict(content)


def _feature_weights(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """Split a VGG16 state dict into its feature weights (keys ``N.*``), unusable keys, and the file's key prefix.

    Accepts a whole torchvision ``vgg16`` state dict (``features.N.*`` and ``classifier.*``, the latter ignored)
    or only its features part, keyed ``features.N.*`` or ``N.*``.
    """
    if any(key.startswith("features.") for key in state):
        features = {key[len("features.") :]: value for key, value in state.items() if key.startswith("features.")}
        foreign = [key for key in state if not key.startswith(("features.", "classifier."))]
        return features, foreign, "features."
    return state, [], ""


def load_vgg16_encoder_weights(model: VGG16UNet | VGG16Encoder, path: str | os.PathLike) -> None:
    """Load VGG16 convolution weights from a local file into ``model``'s encoder, checking every key and shape.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` and may hold a torchvision
    ``vgg16`` state dict (``features.N.weight/bias``; ``classifier.*`` keys are ignored), only its features part
    (``N.weight`` or ``features.N.weight``), or either of these under a ``"state_dict"`` or ``"model"`` key.

    With ``in_channels != 3`` the first convolution, trained on RGB, is adapted: each input channel gets the mean
    of the three RGB kernels times ``3 / in_channels``. A grey image fed to every input channel then gives
    exactly the response the pretrained network gives to that grey image as RGB (for one channel this is the
    sum of the RGB kernels).

    Args:
        model: a :class:`VGG16UNet` or a :class:`VGG16Encoder`.
        path: the weights file.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a VGG16 state dict: missing or unexpected keys, or wrong shapes (all named).
    """
    encoder = model.encoder if isinstance(model, VGG16UNet) else model
    features, foreign, prefix = _feature_weights(_read_state_dict(path))
    expected = encoder.features.state_dict()
    first_weight = "0.weight"
    rgb_shape = (expected[first_weight].shape[0], _VGG16_IN_CHANNELS, *expected[first_weight].shape[2:])
    expected_shapes = {key: tuple(value.shape) for key, value in expected.items()} | {first_weight: rgb_shape}
    missing = [prefix + key for key in sorted(set(expected) - set(features), key=_natural_key)]
    unexpected = foreign + [prefix + key for key in sorted(set(features) - set(expected), key=_natural_key)]
    mismatched = [
        f"{prefix}{key}: {tuple(features[key].shape)} in the file, {expected_shapes[key]} expected"
        for key in sorted(set(expected) & set(features), key=_natural_key)
        if tuple(features[key].shape) != expected_shapes[key]
    ]
    if missing or unexpected or mismatched:
        found = {"missing keys": missing, "unexpected keys": unexpected, "wrong shapes": mismatched}
        problems = [f"{label}: {', '.join(items)}" for label, items in found.items() if items]
        raise ValueError(f"{path}: not a torchvision VGG16 state dict; " + "; ".join(problems))
    in_channels = expected[first_weight].shape[1]
    if in_channels != _VGG16_IN_CHANNELS:
        grey_kernel = features[first_weight].mean(dim=1, keepdim=True) * (_VGG16_IN_CHANNELS / in_channels)
        features[first_weight] = grey_kernel.expand(-1, in_channels, -1, -1).clone()
    encoder.features.load_state_dict(features, strict=True)


def _natural_key(key: str) -> tuple:
    """Sort ``"features.10.weight"`` after ``"features.2.weight"``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split("."))


