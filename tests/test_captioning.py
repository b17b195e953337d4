"""Captioning new images: every image mode PIL reads, the Python API, the hub-style folder, trigram
blocking, attention pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import captioner
from captioner.cli import main
from captioner.config import DecodeConfig, EncoderConfig, ModelConfig
from captioner.data.images import ImageReadError, as_pixels, read_image
from captioner.data.vocabulary import Vocabulary
from captioner.models.decode import _repeated_trigram_words, beam_search
from captioner.models.captioner import CaptionModel

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog", "runs", "on", "grass", "the"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A small model on the real EfficientNet-Lite0 backbone (64 px, 2x2 grid), random decoder, saved."""
    torch.manual_seed(0)
    config = ModelConfig(encoder=EncoderConfig(name="efficientnet-lite0", layer="block15", image_size=64,
                                               feature_dim=8), embedding_dim=8, hidden_dim=12, attention_dim=6,
                         proposal_hidden_dim=6, uniform_attention_init=False)
    model = CaptionModel(config, Vocabulary(WORDS), 64).eval()
    folder = tmp_path_factory.mktemp("model") / "saved"
    model.save_pretrained(folder, DecodeConfig(beam_size=2, max_length=6))
    return folder


def _photo(seed: int = 0, size=(90, 70)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """One file per image mode users send, and a corrupt one."""
    folder = tmp_path_factory.mktemp("images")
    photo = _photo()
    photo.save(folder / "photo.jpg", quality=90)
    photo.save(folder / "photo.png")
    photo.save(folder / "photo.webp")
    photo.convert("L").save(folder / "gray.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    photo.save(folder / "rotated.jpg", exif=exif.tobytes())
    _photo(1, (6000, 4000)).save(folder / "large.jpg", quality=80)
    (folder / "sub").mkdir()
    photo.save(folder / "sub" / "nested.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


def test_every_image_mode_reads_as_rgb_and_exif_rotation_is_applied(image_folder):
    for name in ("photo.jpg", "photo.png", "photo.webp", "gray.png", "alpha.png", "cmyk.jpg", "rotated.jpg",
                 "large.jpg"):
        pixels = read_image(image_folder / name, 32)
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8, name
    with Image.open(image_folder / "rotated.jpg") as image:
        assert image.size == (90, 70)
    # Rotated on reading: what was the left column is now the top row (orientation 6).
    upright = np.asarray(Image.open(image_folder / "photo.jpg").convert("RGB").rotate(-90, expand=True)
                         .resize((32, 32), Image.Resampling.BICUBIC)).astype(float)
    assert np.abs(read_image(image_folder / "rotated.jpg", 32) - upright).mean() < 12
    assert read_image(image_folder / "alpha.png", 32).mean() > read_image(image_folder / "photo.png", 32).mean()
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image(image_folder / "broken.jpg", 32)
    for value in (_photo(), np.asarray(_photo()), np.asarray(_photo().convert("L"))):
        assert as_pixels(value, 16).shape == (16, 16, 3)
    with pytest.raises(ValueError, match="uint8"):
        as_pixels(np.zeros((4, 4, 3), np.float32), 16)


def test_caption_api_round_trip_and_decoding_overrides(saved_model, image_folder):
    for name in ("config.json", "model.safetensors", "decoding.json", "README.md"):
        assert (saved_model / name).is_file()
    config = json.loads((saved_model / "config.json").read_text())
    assert config["vocabulary"] == WORDS and config["backbone"]["name"] == "efficientnet-lite0"
    model = captioner.load(saved_model)
    assert model.decoding == DecodeConfig(beam_size=2, max_length=6)
    images = [image_folder / "photo.jpg", _photo(2), np.asarray(_photo(3))]
    first = model.caption(images)
    model.save_pretrained(saved_model.parent / "again")
    again = captioner.load(saved_model.parent / "again").caption(images)
    assert [c.tokens for c in first] == [c.tokens for c in again]
    assert [c.log_prob for c in first] == [c.log_prob for c in again]
    assert all(len(c.tokens) <= 6 for c in first)
    greedy = model.caption(images, beam_size=1, max_length=3)
    assert all(len(c.tokens) <= 3 for c in greedy)
    one_by_one = [model.caption([image])[0].tokens for image in images]
    assert one_by_one == [c.tokens for c in model.caption(images, batch_size=2)]


def test_a_hub_name_that_cannot_be_downloaded_fails_clearly(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.setattr(huggingface_hub.ModelHubMixin, "from_pretrained", classmethod(
        lambda cls, name, **kwargs: cls._from_pretrained(model_id=name, **kwargs)))
    with pytest.raises(FileNotFoundError, match="Hugging Face Hub"):
        captioner.load("someone/flickr8k-captioner")
    with pytest.raises(FileNotFoundError, match="config.json"):
        captioner.load("no/such/local/folder")


def test_caption_command_writes_the_schema_pictures_and_skips_the_corrupt_file(saved_model, image_folder,
                                                                              tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    pictures = tmp_path / "pictures"
    assert main(["caption", str(saved_model), str(image_folder), "--output", str(out),
                 "--attention-dir", str(pictures), "--batch-size", "4"]) == 0
    assert "skipped 1 unreadable" in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 9 and any(r["file"].endswith("nested.jpg") for r in records)
    for record in records:
        assert set(record) == {"file", "caption", "words"}
        assert record["caption"] == " ".join(w["word"] for w in record["words"])
        for word in record["words"]:
            assert set(word) == {"word", "location", "location_prob", "word_prob"}
            assert 0 <= word["location"] < 4 and 0 < word["location_prob"] <= 1 and 0 < word["word_prob"] <= 1
    assert len(list(pictures.glob("*.png"))) == 9


def test_attention_picture_has_one_panel_per_word_plus_the_image(tmp_path):
    import matplotlib.pyplot as plt

    from captioner.plots import attention_figure, plot_attention

    image = np.asarray(_photo(0, (64, 64)))
    for words in (["a", "dog"], ["a", "dog", "runs", "on", "the", "green", "grass"]):
        figure = attention_figure(image, words, [0, 3] * 4, 2, [0.5] * len(words))
        shown = [axis for axis in figure.axes if axis.images]
        assert len(shown) == len(words) + 1
        assert [axis.get_title() for axis in shown[1:]] == [f"{w} (0.50)" for w in words]
        plt.close(figure)
    path = plot_attention(image, ["a", "dog"], [0, 3], 2, tmp_path / "p.png")
    assert path.stat().st_size > 1000
    # several glimpses per word: every cell a word looked at is outlined (a repeated cell once)
    figure = attention_figure(image, ["a", "dog"], [[0, 3], [2, 2]], 2)
    outlined = [len(axis.patches) for axis in figure.axes if axis.images][1:]
    assert outlined == [2, 1]
    plt.close(figure)


def test_trigram_blocking_bans_exactly_the_words_that_repeat_a_trigram():
    tokens = torch.tensor([[4, 5, 6, 4, 5], [4, 5, 4, 5, 4]])
    banned = _repeated_trigram_words(tokens, 10)
    assert banned[0].nonzero().flatten().tolist() == [6]  # "a dog" was followed by 6 before
    assert banned[1].nonzero().flatten().tolist() == [5]  # "dog a" was followed by "dog" before


def test_trigram_blocking_leaves_no_repeated_trigram_and_greedy_paths_without_one_unchanged(saved_model):
    model = captioner.load(saved_model)
    features = model.encode(model.prepare_images(np.stack([as_pixels(_photo(s), 64) for s in range(6)])))
    changed = 0
    for beam in (1, 2):
        plain = beam_search(model, features, DecodeConfig(beam_size=beam, max_length=12))
        blocked = beam_search(model, features, DecodeConfig(beam_size=beam, max_length=12, block_trigrams=True))
        for a, b in zip(plain, blocked):
            trigrams = [tuple(b.tokens[i:i + 3]) for i in range(len(b.tokens) - 2)]
            assert len(trigrams) == len(set(trigrams))
            repeats = [tuple(a.tokens[i:i + 3]) for i in range(len(a.tokens) - 2)]
            changed += a.tokens != b.tokens
            if beam == 1 and len(repeats) == len(set(repeats)):
                assert a.tokens == b.tokens  # the rule never fired along the greedy path
    assert changed  # the random decoder repeats itself, so blocking must have changed something


def test_caption_command_decoding_flags_override_the_saved_settings(saved_model, image_folder, tmp_path):
    out = tmp_path / "c.jsonl"
    assert main(["caption", str(saved_model), str(image_folder / "photo.jpg"), "--output", str(out),
                 "--beam-size", "1", "--max-length", "2", "--block-trigrams", "--attention-mode", "sample"]) == 0
    record = json.loads(out.read_text())
    assert len(record["words"]) <= 2


def _trigrams_repeat(words: list[str]) -> bool:
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return len(trigrams) != len(set(trigrams))


def test_block_trigrams_reaches_every_generation_path(saved_model, tmp_path):
    """`captioner caption --block-trigrams`, `CaptionModel.caption(block_trigrams=True)` and the scoring
    path (`evaluation.generate` with decode.block_trigrams, what `captioner evaluate --block-trigrams` and
    validation call) all decode through the one beam search: each changes a caption that repeats a
    trigram, and the same way."""
    from captioner.data.datasets import CaptionSplit
    from captioner.evaluation import generate

    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for seed in range(6):
        _photo(seed).save(folder / f"p{seed}.png")
        paths.append(str(folder / f"p{seed}.png"))
    outputs = {}
    for flag in ("--no-block-trigrams", "--block-trigrams"):
        out = tmp_path / f"{flag}.jsonl"
        assert main(["caption", str(saved_model), *paths, "--output", str(out), "--beam-size", "1",
                     "--max-length", "12", flag]) == 0
        outputs[flag] = [json.loads(line)["caption"] for line in out.read_text().splitlines()]
    plain, blocked = outputs["--no-block-trigrams"], outputs["--block-trigrams"]
    assert any(_trigrams_repeat(c.split()) for c in plain)  # the random decoder repeats itself...
    assert not any(_trigrams_repeat(c.split()) for c in blocked)  # ...and the flag stops it
    assert plain != blocked

    model = captioner.load(saved_model)
    api = [c.text for c in model.caption(paths, beam_size=1, max_length=12, block_trigrams=True)]
    assert api == blocked
    pixels = np.stack([as_pixels(path, model.image_size) for path in paths])
    split = CaptionSplit("test", model.prepare_images(pixels), [["a dog"]] * len(paths), list(range(len(paths))))
    scored = [c.text for c in generate(model, split, DecodeConfig(beam_size=1, max_length=12, block_trigrams=True),
                                       "cpu")]
    assert scored == blocked
    unblocked = [c.text for c in generate(model, split, DecodeConfig(beam_size=1, max_length=12), "cpu")]
    assert unblocked == plain
