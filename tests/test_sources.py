"""Tests for the data set readers (captioner/data/sources.py), on real copies and tiny fixtures."""

from __future__ import annotations

import io
import json
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image

from captioner.data.records import CaptionRecords
from captioner.data.sources import (
    DatasetDownloadError,
    read_coco,
    read_dataset,
    read_flickr8k,
    read_hf_dataset,
    read_karpathy,
)

FLICKR_KNOWN_IMAGE = "1000268201_693b08cb0e"


def quiet(reader, *args, **kwargs) -> CaptionRecords:
    """Run a reader that must not warn: a warning there means something was skipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return reader(*args, **kwargs)


def jpeg_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def touch_images(folder: Path, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"not decoded by the readers")


def by_id(records: CaptionRecords) -> dict:
    return {record.image_id: record for record in records.all_records()}


# ---- real data --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flickr8k_read(flickr8k_root):
    with pytest.warns(UserWarning, match="2258277193_586949ec62.jpg") as caught:
        records = read_flickr8k(flickr8k_root)
    return records, [str(w.message) for w in caught]


def test_flickr8k_real_counts(flickr8k_read):
    records, _ = flickr8k_read
    assert records.counts() == {"train": {"images": 6000, "captions": 30000},
                                "val": {"images": 1000, "captions": 5000},
                                "test": {"images": 1000, "captions": 5000}}
    assert all(len(r.captions) == 5 and r.path.is_file() for r in records.splits["test"][:50])
    assert {r.split for r in records.splits["val"]} == {"val"}
    assert "91 captioned images in no split" in records.source


def test_flickr8k_real_bad_entry_skipped_and_warned_once(flickr8k_read):
    records, messages = flickr8k_read
    assert len(messages) == 1
    # "...jpg.1" (1 line) and "...jpg" (4 lines): in no split file, and no image file either
    assert records.skipped.counts == {"captions of an image in no split": 2}
    details = " ".join(records.skipped.examples["captions of an image in no split"])
    assert "Flickr8k.token.txt:6731" in details and "2258277193_586949ec62.jpg.1" in details
    assert "2258277193_586949ec62" not in by_id(records)


def test_flickr8k_real_captions_match_token_file(flickr8k_read, flickr8k_root):
    records, _ = flickr8k_read
    lines = (flickr8k_root / "Flickr8k_text" / "Flickr8k.token.txt").read_text().splitlines()
    expected = dict(line.split("\t", 1) for line in lines if line.startswith(FLICKR_KNOWN_IMAGE + ".jpg#"))
    record = by_id(records)[FLICKR_KNOWN_IMAGE]
    assert record.captions == tuple(expected[f"{FLICKR_KNOWN_IMAGE}.jpg#{n}"].strip() for n in range(5))
    assert record.captions[0] == "A child in a pink dress is climbing up a set of stairs in an entry way ."
    assert record.path == flickr8k_root / "Flicker8k_Dataset" / f"{FLICKR_KNOWN_IMAGE}.jpg"
    train_names = (flickr8k_root / "Flickr8k_text" / "Flickr_8k.trainImages.txt").read_text().split()
    assert [r.path.name for r in records.splits["train"]] == train_names  # split file order kept


def test_coco_mini_real(coco_mini_root):
    records = quiet(read_coco, {"val": coco_mini_root / "annotations" / "captions_val2017.json"},
                    {"val": coco_mini_root / "val2017"})
    assert records.counts()["val"] == {"images": 79, "captions": 395}
    assert records.splits["train"] == [] and records.splits["test"] == []
    assert {r.split for r in records.all_records()} == {"val"}
    assert records.skipped.total == 0
    data = json.loads((coco_mini_root / "annotations" / "captions_val2017.json").read_text())
    image = data["images"][0]
    record = by_id(records)[str(image["id"])]
    assert record.path == coco_mini_root / "val2017" / image["file_name"] and record.path.is_file()
    assert record.captions == tuple(a["caption"].strip() for a in data["annotations"] if a["image_id"] == image["id"])


# ---- Flickr8k layout, small -------------------------------------------------------------------


def make_flickr8k(root: Path) -> Path:
    """Five images a..e (e has no file), with a malformed line, a duplicate line, an image listed in
    two splits, one without usable captions and one in no split."""
    touch_images(root / "Flicker8k_Dataset", ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "unsplit.jpg"])
    text = root / "Flickr8k_text"
    text.mkdir()
    (text / "Flickr8k.token.txt").write_text(
        "a.jpg#1\t  A second caption .  \n"
        "a.jpg#0\tA first caption .\n"
        "a.jpg#1\tA repeated index .\n"          # duplicate caption line
        "b.jpg#0 Separated by a space .\n"       # tab lost: still readable
        "b.jpg#x\tBad index .\n"                 # malformed
        "b.jpg has no index at all\n"            # malformed
        "\n"
        "c.jpg#0\t   \n"                         # empty caption: malformed, c is left without captions
        "d.jpg#0\tD in two splits .\n"
        "e.jpg#0\tE has no image file .\n"
        "unsplit.jpg#0\tNot in any split .\n"
        "ghost.jpg#0\tNo file and no split .\n"
    )
    (text / "Flickr_8k.trainImages.txt").write_text("a.jpg\nd.jpg\n")
    (text / "Flickr_8k.devImages.txt").write_text("b.jpg\nc.jpg\nd.jpg\n")
    (text / "Flickr_8k.testImages.txt").write_text("e.jpg\n")
    return root


def test_flickr8k_small_records_and_skips(tmp_path):
    root = make_flickr8k(tmp_path)
    with pytest.warns(UserWarning, match="skipped 8") as caught:
        records = read_flickr8k(root)
    assert len(caught) == 1
    assert {name: [r.image_id for r in rs] for name, rs in records.splits.items()} == \
        {"train": ["a", "d"], "val": ["b"], "test": []}
    ids = by_id(records)
    assert ids["a"].captions == ("A first caption .", "A second caption .")
    assert ids["b"].captions == ("Separated by a space .",)
    assert ids["a"].path == root / "Flicker8k_Dataset" / "a.jpg" and ids["a"].split == "train"
    assert records.skipped.counts == {
        "duplicate caption line": 1, "malformed caption line": 3, "image without captions": 1,
        "image listed twice in the split files": 1, "image file missing": 1, "captions of an image in no split": 1,
    }
    examples = records.skipped.examples
    assert examples["duplicate caption line"] == ["Flickr8k.token.txt:3: a.jpg#1 already on line 1"]
    assert examples["malformed caption line"][0].startswith("Flickr8k.token.txt:5:")
    assert examples["image listed twice in the split files"][0].startswith("Flickr_8k.devImages.txt:3: d.jpg")
    assert any("Flickr_8k.testImages.txt:1" in e and "e.jpg" in e for e in examples["image file missing"])
    assert any("ghost.jpg" in e for e in examples["captions of an image in no split"])
    assert "1 captioned images in no split" in records.source


def test_flickr8k_missing_files_are_clear_errors(tmp_path):
    root = make_flickr8k(tmp_path)
    with pytest.raises(FileNotFoundError, match="Flickr_8k.testImages.txt"):
        (root / "Flickr8k_text" / "Flickr_8k.testImages.txt").unlink()
        read_flickr8k(root)
    with pytest.raises(FileNotFoundError, match=r"Flickr8k.token.txt.*expected the caption file"):
        (root / "Flickr8k_text" / "Flickr8k.token.txt").unlink()
        read_flickr8k(root)
    with pytest.raises(FileNotFoundError, match="Flicker8k_Dataset"):
        read_flickr8k(tmp_path / "elsewhere")


def test_flickr30k_token_layout(tmp_path):
    touch_images(tmp_path / "flickr30k-images", ["1.jpg", "2.jpg"])
    (tmp_path / "results_20130124.token").write_text("1.jpg#0\tOne .\n2.jpg#0\tTwo .\n2.jpg#1\tTwo again .\n")
    (tmp_path / "test.txt").write_text("2.jpg\n")
    records = quiet(read_flickr8k, tmp_path, image_dir="flickr30k-images", token_file="results_20130124.token",
                    split_files=[("test", "test.txt")])
    assert [(r.image_id, r.captions) for r in records.splits["test"]] == [("2", ("Two .", "Two again ."))]


# ---- Karpathy split files ---------------------------------------------------------------------


def sentences(*raw):
    return [{"raw": text, "tokens": text.lower().split(), "imgid": 0, "sentid": i} for i, text in enumerate(raw)]


def make_karpathy_coco(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "coco"
    touch_images(root / "train2014", ["COCO_train2014_1.jpg"])
    touch_images(root / "val2014", ["COCO_val2014_2.jpg", "COCO_val2014_3.jpg", "COCO_val2014_4.jpg"])
    images = [
        {"filepath": "train2014", "filename": "COCO_train2014_1.jpg", "imgid": 0, "split": "train", "cocoid": 1,
         "sentences": sentences(" A train image. ", "Second.")},
        {"filepath": "val2014", "filename": "COCO_val2014_2.jpg", "imgid": 1, "split": "restval", "cocoid": 2,
         "sentences": sentences("A restval image.")},
        {"filepath": "val2014", "filename": "COCO_val2014_3.jpg", "imgid": 2, "split": "val", "cocoid": 3,
         "sentences": sentences("A val image.", "")},
        {"filepath": "val2014", "filename": "COCO_val2014_4.jpg", "imgid": 3, "split": "test", "cocoid": 4,
         "sentences": sentences("A test image.")},
        {"filepath": "val2014", "filename": "COCO_val2014_5.jpg", "imgid": 4, "split": "test", "cocoid": 5,
         "sentences": sentences("No such file.")},
        {"filepath": "val2014", "imgid": 5, "split": "test", "sentences": sentences("No filename.")},
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": "coco", "images": images}))
    return path, root


def test_karpathy_coco_restval_to_train(tmp_path):
    path, root = make_karpathy_coco(tmp_path)
    with pytest.warns(UserWarning, match="dataset_coco.json: images\\[4\\]: no file"):
        records = read_karpathy(path, root)
    assert {name: [r.image_id for r in rs] for name, rs in records.splits.items()} == \
        {"train": ["1", "2"], "val": ["3"], "test": ["4"]}
    ids = by_id(records)
    assert ids["1"].captions == ("A train image.", "Second.")
    assert ids["1"].path == root / "train2014" / "COCO_train2014_1.jpg"
    assert ids["2"].split == "train" and ids["3"].captions == ("A val image.",)
    assert records.skipped.counts == {"image file missing": 1, "malformed entry": 1, "empty or malformed caption": 1}
    assert records.skipped.examples["malformed entry"][0].startswith("dataset_coco.json: images[5]")


def test_karpathy_coco_restval_drop(tmp_path):
    path, root = make_karpathy_coco(tmp_path)
    with pytest.warns(UserWarning):
        records = read_karpathy(path, root, restval="drop")
    assert [r.image_id for r in records.splits["train"]] == ["1"]
    assert "2" not in by_id(records)
    assert "1 restval images left out" in records.source
    assert "restval" not in str(records.skipped.counts)  # left out by choice, not skipped
    with pytest.raises(ValueError, match="restval"):
        read_karpathy(path, root, restval="val")


def test_karpathy_flickr8k_and_errors(tmp_path):
    touch_images(tmp_path / "images", ["x_1.jpg", "y_2.jpg"])
    images = [{"filename": "x_1.jpg", "imgid": 0, "split": "train", "sentences": sentences("X one.", "X two.")},
              {"filename": "y_2.jpg", "imgid": 1, "split": "test", "sentences": sentences("Y.")},
              {"filename": "y_2.jpg", "imgid": 2, "split": "val", "sentences": sentences("Y again.")},
              {"filename": "z.jpg", "imgid": 3, "split": "holdout", "sentences": sentences("Z.")}]
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    with pytest.warns(UserWarning, match="duplicate image"):
        records = read_dataset("karpathy", json_path=path, image_root=tmp_path / "images")
    assert [(r.image_id, r.split, r.captions) for r in records.all_records()] == \
        [("x_1", "train", ("X one.", "X two.")), ("y_2", "test", ("Y.",))]
    assert records.splits["train"][0].path == tmp_path / "images" / "x_1.jpg"
    assert records.skipped.counts == {"duplicate image": 1, "unknown split": 1}
    assert records.source.startswith("karpathy-flickr8k:")
    with pytest.raises(FileNotFoundError, match="dataset_flickr30k.json.*Karpathy"):
        read_karpathy(tmp_path / "dataset_flickr30k.json", tmp_path)
    (tmp_path / "bad.json").write_text('{"dataset": "x"}')
    with pytest.raises(ValueError, match='bad.json: no "images" list'):
        read_karpathy(tmp_path / "bad.json", tmp_path)


# ---- COCO annotations -------------------------------------------------------------------------


def write_coco(path: Path, images, annotations) -> Path:
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    return path


def test_coco_small(tmp_path, capsys):
    touch_images(tmp_path / "train", ["t1.jpg", "t2.jpg"])
    touch_images(tmp_path / "val", ["v1.jpg"])
    train = write_coco(tmp_path / "captions_train.json",
                       [{"id": 11, "file_name": "t1.jpg"}, {"id": 12, "file_name": "t2.jpg"},
                        {"id": 13, "file_name": "missing.jpg"}, {"file_name": "no_id.jpg"}],
                       [{"id": 1, "image_id": 11, "caption": " First of t1. "}, {"id": 2, "image_id": 11, "caption": "Second."},
                        {"id": 3, "image_id": 12, "caption": None}, {"id": 4, "image_id": 13, "caption": "Lost."},
                        {"id": 5, "image_id": 99, "caption": "Orphan."}])
    val = write_coco(tmp_path / "captions_val.json", [{"id": 21, "file_name": "v1.jpg"}],
                     [{"id": 6, "image_id": 21, "caption": "The val image."}])
    with pytest.warns(UserWarning, match="skipped 5"):
        records = read_dataset("coco", annotations={"train": train, "val": val},
                               image_dirs={"train": tmp_path / "train", "val": tmp_path / "val"})
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are kept quiet
    assert [(r.image_id, r.split, r.captions) for r in records.all_records()] == \
        [("11", "train", ("First of t1.", "Second.")), ("21", "val", ("The val image.",))]
    assert records.splits["train"][0].path == tmp_path / "train" / "t1.jpg"
    assert records.skipped.counts == {"malformed entry": 1, "caption of an unknown image": 1,
                                      "empty or malformed caption": 1, "image without captions": 1,
                                      "image file missing": 1}
    with pytest.raises(FileNotFoundError, match="captions_test.json"):
        read_coco({"test": tmp_path / "captions_test.json"}, {"test": tmp_path})
    with pytest.raises(ValueError, match="no image folder given for splits \\['val'\\]"):
        read_coco({"val": val}, {})


# ---- Hugging Face parquet ---------------------------------------------------------------------


def write_image_captions_parquet(folder: Path, split: str, rows: list[dict]) -> Path:
    """jxie/flickr8k's layout, written with `datasets` so the image column is an Image feature."""
    import datasets

    features = datasets.Features({"image": datasets.Image(),
                                  **{f"caption_{i}": datasets.Value("string") for i in range(5)}})
    path = folder / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {name: [row.get(name) for row in rows] for name in features}
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return path


def caption_row(image, *captions):
    return {"image": image, **{f"caption_{i}": c for i, c in enumerate(captions)}}


def test_hf_image_captions_layout_materialises_images(tmp_path):
    red, green, blue = jpeg_bytes((255, 0, 0)), jpeg_bytes((0, 255, 0)), jpeg_bytes((0, 0, 255))
    source = tmp_path / "flickr8k-parquet"
    write_image_captions_parquet(source, "train", [
        caption_row({"bytes": red, "path": "1000_abc.jpg"}, " Red one. ", "Red two.", "Red 3.", "Red 4.", "Red 5."),
        caption_row({"bytes": green, "path": None}, "Green.", None, "", "Green again.", "Green 5."),
        caption_row(None, "No image.", "a", "b", "c", "d"),
    ])
    write_image_captions_parquet(source, "validation", [caption_row({"bytes": blue, "path": None}, "Blue.")])
    write_image_captions_parquet(source, "test", [caption_row({"bytes": red, "path": "1000_abc.jpg"}, "Red again.")])
    out = tmp_path / "images"
    with pytest.warns(UserWarning, match="image missing"):
        records = read_hf_dataset(source, image_root=None, cache_dir=tmp_path / "cache", materialize_dir=out)
    assert "image-captions" in records.source
    assert [(r.image_id, r.split, r.captions) for r in records.all_records()] == [
        ("1000_abc", "train", ("Red one.", "Red two.", "Red 3.", "Red 4.", "Red 5.")),
        ("train-1", "train", ("Green.", "Green again.", "Green 5.")),
        ("validation-0", "val", ("Blue.",)),
    ]
    assert [r.path for r in records.all_records()] == [out / "train" / "0.jpg", out / "train" / "1.jpg",
                                                      out / "validation" / "0.jpg"]
    assert (out / "train" / "0.jpg").read_bytes() == red and (out / "validation" / "0.jpg").read_bytes() == blue
    assert records.skipped.counts == {"empty or malformed caption": 10, "image missing": 1, "duplicate image": 1}
    assert records.skipped.examples["duplicate image"][0].startswith(f"{source} split test row 0: 1000_abc")
    assert not (out / "train" / "2.jpg").exists()

    # A second read finds the files there and leaves them alone.
    stamp = (out / "train" / "0.jpg").stat().st_mtime_ns
    time.sleep(0.01)
    with pytest.warns(UserWarning):
        again = read_hf_dataset(source, layout="jxie/flickr8k", cache_dir=tmp_path / "cache", materialize_dir=out)
    assert again.all_records() == records.all_records()
    assert (out / "train" / "0.jpg").stat().st_mtime_ns == stamp


def write_karpathy_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def karpathy_row(filepath, filename, split, cocoid, *sentences):
    return {"filepath": filepath, "filename": filename, "sentences": list(sentences), "cocoid": cocoid,
            "split": split, "url": f"http://images.cocodataset.org/{filepath}/{filename}", "sentids": [1], "imgid": 0}


def test_hf_coco_karpathy_layout(tmp_path):
    images = tmp_path / "coco"
    touch_images(images / "train2014", ["a.jpg"])
    touch_images(images / "val2014", ["b.jpg", "c.jpg", "d.jpg"])
    files = {
        "train": write_karpathy_parquet(tmp_path / "train.parquet", [
            karpathy_row("train2014", "a.jpg", "train", 1, " A one. ", "A two.")]),
        "restval": write_karpathy_parquet(tmp_path / "restval.parquet", [
            karpathy_row("val2014", "b.jpg", "restval", 2, "B.")]),
        "validation": write_karpathy_parquet(tmp_path / "validation.parquet", [
            karpathy_row("val2014", "c.jpg", "val", 3, "C.")]),
        "test": write_karpathy_parquet(tmp_path / "test.parquet", [
            karpathy_row("val2014", "d.jpg", "test", 4, "D."),
            karpathy_row("val2014", "gone.jpg", "test", 5, "Gone.")]),
    }
    with pytest.warns(UserWarning, match="gone.jpg"):
        records = read_dataset("huggingface", name_or_path=files, image_root=images, cache_dir=tmp_path / "cache")
    assert "(karpathy)" in records.source
    assert {name: [r.image_id for r in rs] for name, rs in records.splits.items()} == \
        {"train": ["1", "2"], "val": ["3"], "test": ["4"]}
    assert by_id(records)["1"].captions == ("A one.", "A two.")
    assert by_id(records)["3"].path == images / "val2014" / "c.jpg"
    assert records.skipped.counts == {"image file missing": 1}

    with pytest.warns(UserWarning):
        dropped = read_hf_dataset(files, image_root=images, cache_dir=tmp_path / "cache",
                                  split_names={"restval": None})
    assert [r.image_id for r in dropped.splits["train"]] == ["1"]
    with pytest.raises(ValueError, match="image_root"):
        read_hf_dataset(files, cache_dir=tmp_path / "cache")


def test_hf_unknown_layout_lists_columns(tmp_path):
    path = write_karpathy_parquet(tmp_path / "other.parquet", [{"picture": "x", "text": "y"}])
    with pytest.raises(ValueError, match=r"columns \['picture', 'text'\]"):
        read_hf_dataset(path, cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        read_hf_dataset(tmp_path / "missing.parquet", cache_dir=tmp_path / "cache")


def test_hf_hub_offline_error_is_clear_and_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(DatasetDownloadError) as caught:
        read_hf_dataset("captioner-tests/no-such-dataset", cache_dir=tmp_path / "cache", materialize_dir=tmp_path)
    assert time.monotonic() - started < 10  # offline mode was honoured: no network retries
    message = str(caught.value)
    assert "'captioner-tests/no-such-dataset' could not be downloaded" in message
    assert "machine with internet" in message and "HF cache" in message and "parquet files" in message
    assert isinstance(caught.value, ConnectionError)


def test_read_dataset_unknown_kind():
    with pytest.raises(ValueError, match="unknown kind 'imagenet'.*'coco'.*'flickr8k'"):
        read_dataset("imagenet")
