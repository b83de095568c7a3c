"""Tests for scripts.networks: the VGG16 U-Net, its pretrained-weight loader, freezing and export."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from torch import nn

from pengwin_xray.compare import count_parameters
from scripts.handlers import EncoderFreezeHandler
from scripts.networks import (
    MAKE_VGG16_WEIGHTS,
    VGG16Encoder,
    VGG16UNet,
    load_vgg16_encoder_weights,
)

#: torchvision ``vgg16().features``: index -> (out, in) channels of each convolution; ReLU after each,
#: max pools at 4, 9, 16, 23 and 30. Written out here so the layout is checked against an independent copy.
TORCHVISION_CONVS = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
    17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
}
TORCHVISION_POOLS = (4, 9, 16, 23)
#: parameters in torchvision's vgg16().features
VGG16_FEATURES_PARAMETERS = 14_714_688


def torchvision_vgg16_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision vgg16's key names and feature shapes, random values, and classifier keys.

    The classifier tensors are small stand-ins (the real ones are 0.5 GB): the loader must ignore them anyway.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (out_channels, in_channels) in TORCHVISION_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(out_channels, in_channels, 3, 3, generator=generator)
        state[f"features.{index}.bias"] = torch.randn(out_channels, generator=generator)
    for index in (0, 3, 6):
        state[f"classifier.{index}.weight"] = torch.randn(4, 8, generator=generator)
        state[f"classifier.{index}.bias"] = torch.randn(4, generator=generator)
    return state


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def non_encoder_state(model: VGG16UNet) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items() if not key.startswith("encoder.")}


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(
    "in_channels, out_channels, height, width",
    [(3, 30, 32, 32), (1, 30, 64, 48), (2, 5, 48, 32), (3, 30, 16, 80)],
)
def test_forward_gives_logits_at_input_size(in_channels: int, out_channels: int, height: int, width: int) -> None:
    model = VGG16UNet(in_channels=in_channels, out_channels=out_channels).eval()
    with torch.no_grad():
        output = model(torch.randn(2, in_channels, height, width))
    assert output.shape == (2, out_channels, height, width)
    assert torch.isfinite(output).all()


def test_default_output_has_thirty_channels() -> None:
    assert VGG16UNet().head.out_channels == 30


@pytest.mark.parametrize("height, width", [(40, 48), (48, 24), (8, 8)])
def test_input_not_divisible_by_16_raises(height: int, width: int) -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        VGG16UNet().eval()(torch.randn(1, 3, height, width))


@pytest.mark.parametrize("decoder_channels", [(256, 128, 64), (256, 128, 64, 32, 16), (256, 0, 64, 32)])
def test_bad_decoder_channels_raise(decoder_channels: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="decoder_channels"):
        VGG16UNet(decoder_channels=decoder_channels)


def test_encoder_has_torchvision_vgg16_features_layout() -> None:
    features = VGG16Encoder().features
    assert len(features) == 30  # torchvision's indices 0..29; the weightless last pool (30) is not used
    for index, layer in enumerate(features):
        if index in TORCHVISION_CONVS:
            assert isinstance(layer, nn.Conv2d)
            assert (layer.out_channels, layer.in_channels) == TORCHVISION_CONVS[index]
            assert layer.kernel_size == (3, 3) and layer.padding == (1, 1)
        elif index in TORCHVISION_POOLS:
            assert isinstance(layer, nn.MaxPool2d)
        else:
            assert isinstance(layer, nn.ReLU), index
    expected_keys = {f"{index}.{kind}" for index in TORCHVISION_CONVS for kind in ("weight", "bias")}
    assert set(features.state_dict()) == expected_keys
    assert count_parameters(features) == VGG16_FEATURES_PARAMETERS


def test_decoder_skips_include_full_resolution() -> None:
    model = VGG16UNet().eval()
    skip_shapes: list[tuple[int, ...]] = []
    hooks = [
        block.register_forward_pre_hook(lambda _module, args: skip_shapes.append(tuple(args[1].shape)))
        for block in model.decoder
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 48))
    for hook in hooks:
        hook.remove()
    assert skip_shapes == [(1, 512, 8, 6), (1, 256, 16, 12), (1, 128, 32, 24), (1, 64, 64, 48)]


@pytest.mark.parametrize(
    "layout",
    ["torchvision", "features_prefixed", "features_unprefixed", "wrapped_state_dict", "wrapped_model"],
)
def test_pretrained_weights_set_exactly_the_encoder(layout: str, tmp_path: Path) -> None:
    state = torchvision_vgg16_state_dict()
    features = {key: value for key, value in state.items() if key.startswith("features.")}
    content = {
        "torchvision": state,
        "features_prefixed": features,
        "features_unprefixed": {key.removeprefix("features."): value for key, value in features.items()},
        "wrapped_state_dict": {"state_dict": state, "epoch": 3},
        "wrapped_model": {"model": features},
    }[layout]
    model = VGG16UNet()
    decoder_before = non_encoder_state(model)
    load_vgg16_encoder_weights(model, save(content, tmp_path / "vgg16.pth"))
    loaded = model.encoder.features.state_dict()
    assert set(loaded) == {key.removeprefix("features.") for key in features}
    for key, value in loaded.items():
        assert torch.equal(value, features[f"features.{key}"]), key
    for key, value in non_encoder_state(model).items():
        assert torch.equal(value, decoder_before[key]), key


def test_pretrained_path_and_freeze_encoder_at_construction(tmp_path: Path) -> None:
    state = torchvision_vgg16_state_dict(seed=1)
    model = VGG16UNet(pretrained_path=str(save(state, tmp_path / "vgg16.pth")), freeze_encoder=True)
    assert torch.equal(model.encoder.features[28].bias, state["features.28.bias"])
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())


@pytest.mark.parametrize(
    "corrupt, named",
    [
        (lambda s: s.pop("features.28.bias"), "missing keys: features.28.bias"),
        (lambda s: s.update({"features.1.weight": torch.ones(64)}), "unexpected keys: features.1.weight"),
        (lambda s: s.update({"decoder.0.weight": torch.ones(1)}), "unexpected keys: decoder.0.weight"),
        (lambda s: s.update({"features.5.weight": torch.ones(128, 32, 3, 3)}), r"shapes: features.5.weight: \(128, 32"),
        (lambda s: s.update({"features.0.weight": torch.ones(64, 1, 3, 3)}), r"shapes: features.0.weight: \(64, 1,"),
    ],
)
def test_bad_weights_file_names_the_file_and_the_keys(corrupt, named: str, tmp_path: Path) -> None:
    state = torchvision_vgg16_state_dict()
    corrupt(state)
    path = save(state, tmp_path / "broken_vgg16.pth")
    with pytest.raises(ValueError, match=named) as error:
        VGG16UNet(pretrained_path=path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("content", [[1, 2, 3], {"features.0.weight": 3}])
def test_weights_file_that_is_not_a_state_dict_raises(content: object, tmp_path: Path) -> None:
    path = save(content, tmp_path / "not_weights.pth")
    with pytest.raises(ValueError, match="not_weights.pth"):
        VGG16UNet(pretrained_path=path)


def test_weights_saved_in_the_format_before_pytorch_1_6_are_read(tmp_path: Path) -> None:
    """torchvision's older downloads are such files."""
    state = torchvision_vgg16_state_dict(seed=2)
    torch.save(state, tmp_path / "vgg16.pth", _use_new_zipfile_serialization=False)
    model = VGG16UNet(pretrained_path=str(tmp_path / "vgg16.pth"))
    assert torch.equal(model.encoder.features[0].weight, state["features.0.weight"])


@pytest.mark.parametrize("damage", ["text", "truncated", "empty", "nan"])
def test_a_damaged_weights_file_is_one_line_naming_it(damage: str, tmp_path: Path) -> None:
    path = save(torchvision_vgg16_state_dict(), tmp_path / "vgg16.pth")
    if damage == "text":
        path.write_text("hello world\n")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        state = torchvision_vgg16_state_dict()
        state["features.2.weight"][0, 0, 0, 0] = float("nan")
        save(state, path)
    with pytest.raises(ValueError) as error:
        VGG16UNet(pretrained_path=path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert ("features.2.weight" in message) == (damage == "nan")


def test_unreadable_or_absent_weights_file_raises(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pth"):
        VGG16UNet(pretrained_path=garbage)
    with pytest.raises(FileNotFoundError, match="absent.pth") as info:
        VGG16UNet(pretrained_path=tmp_path / "absent.pth")
    assert str(info.value).endswith(MAKE_VGG16_WEIGHTS) and "\n" not in str(info.value)


def test_the_weight_making_command_is_well_formed_and_documented() -> None:
    words = shlex.split(MAKE_VGG16_WEIGHTS)
    code = words[words.index("-c") + 1]
    compile(code, "make_vgg16_weights", "exec")  # the Python it runs parses
    assert "torchvision" in words and "torchvision.models.vgg16(weights='IMAGENET1K_V1')" in code
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert MAKE_VGG16_WEIGHTS in readme


@pytest.mark.parametrize("in_channels", [1, 2])
def test_adapted_first_conv_answers_grey_like_rgb(in_channels: int, tmp_path: Path) -> None:
    path = save(torchvision_vgg16_state_dict(), tmp_path / "vgg16.pth")
    rgb_model = VGG16UNet(pretrained_path=path).eval()
    model = VGG16UNet(in_channels=in_channels, pretrained_path=path).eval()
    grey = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        expected = rgb_model.encoder.features[0](grey.expand(-1, 3, -1, -1))
        actual = model.encoder.features[0](grey.expand(-1, in_channels, -1, -1))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert model.encoder.features[0].weight.shape == (64, in_channels, 3, 3)


def test_frozen_encoder_is_not_moved_by_the_optimizer() -> None:
    model = VGG16UNet(out_channels=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images, targets = torch.randn(2, 3, 32, 32), torch.rand(2, 2, 32, 32)

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(images), targets).backward()
        optimizer.step()

    step()  # Adam now holds momentum for the encoder: a zero gradient would still move it
    model.set_encoder_trainable(False)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - VGG16_FEATURES_PARAMETERS
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = model.head.weight.detach().clone()
    step()
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    assert not torch.equal(model.head.weight, head_before)

    model.set_encoder_trainable(True)
    assert all(p.requires_grad for p in model.encoder.parameters())
    step()
    assert not torch.equal(model.encoder.features[0].weight, encoder_before["features.0.weight"])


@pytest.mark.parametrize("freeze_epochs, expected", [(2, [False, False, True, True]), (0, [True] * 4)])
@pytest.mark.parametrize("wrap", [False, True])
def test_encoder_freeze_handler_unfreezes_after_freeze_epochs(freeze_epochs: int, expected: list, wrap: bool) -> None:
    model = VGG16UNet(out_channels=2)
    trainable_per_epoch: list[bool] = []
    engine = Engine(lambda _engine, _batch: trainable_per_epoch.append(model.encoder.features[0].weight.requires_grad))
    engine.network = nn.DataParallel(model) if wrap else model
    EncoderFreezeHandler(freeze_epochs).attach(engine)
    engine.run([0], max_epochs=4)
    assert trainable_per_epoch == expected


def test_encoder_freeze_handler_rejects_negative_epochs() -> None:
    with pytest.raises(ValueError, match="freeze_epochs"):
        EncoderFreezeHandler(-1)


def test_torchscript_and_trace_match_eager() -> None:
    model = VGG16UNet().eval()
    image = torch.randn(1, 3, 64, 64)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    buffer.seek(0)
    scripted = torch.jit.load(buffer)
    with torch.no_grad():
        expected = model(image)
        traced = torch.jit.trace(model, image)
        torch.testing.assert_close(scripted(image), expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(traced(image), expected, rtol=0, atol=1e-4)
    with pytest.raises(torch.jit.Error, match="divisible by 16"):
        scripted(torch.randn(1, 3, 40, 48))


def test_onnx_export_matches_eager_for_other_sizes() -> None:
    model = VGG16UNet(out_channels=4).eval()
    buffer = io.BytesIO()
    dynamic = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        model, (torch.randn(1, 3, 64, 64),), buffer, dynamo=False, input_names=["image"], output_names=["pred"],
        dynamic_axes={"image": dynamic, "pred": dynamic},
    )
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    image = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = model(image).numpy()
    np.testing.assert_allclose(session.run(None, {"image": image.numpy()})[0], expected, rtol=0, atol=1e-4)


def test_bundle_config_instantiates_the_network(tmp_path: Path) -> None:
    path = save(torchvision_vgg16_state_dict(), tmp_path / "vgg16.pth")
    config = {
        "network_def": {
            "_target_": "scripts.networks.VGG16UNet",
            "in_channels": 1,
            "out_channels": 30,
            "pretrained_path": str(path),
        }
    }
    network = ConfigParser(config).get_parsed_content("network_def")
    assert isinstance(network, VGG16UNet)
    assert network.encoder.features[0].weight.shape == (64, 1, 3, 3)
