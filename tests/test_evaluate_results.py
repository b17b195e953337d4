"""Scoring a COCO results file: input checks, the report, the `captioner evaluate --results` command.

Golden numbers: ../shared/data/flickr8k/README.md (caption #0 of each test image against #1-#4,
pycocoevalcap 1.2). Tests that read the real data skip without it; those that need Java skip without it.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from captioner.cli import main
from captioner.metrics import coco as coco_module
from captioner.metrics import results as results_module
from captioner.data.ptb import java_available
from captioner.metrics.results import (
    REPORT_FORMAT,
    EvaluationInputError,
    evaluate_results,
    flickr8k_annotations,
    format_report,
    load_annotations,
    load_results,
    write_report,
)
from captioner.metrics.sacrebleu_score import sacrebleu_corpus

GOLDEN = {"Bleu_1": 0.63641, "Bleu_2": 0.44578, "Bleu_3": 0.30549, "Bleu_4": 0.20946,
          "METEOR": 0.25005, "ROUGE_L": 0.48755, "CIDEr": 0.78860}
FAST = ("bleu", "rouge", "cider")  # everything but METEOR, whose Java start takes ~10 s

ANNOTATIONS = {
    "images": [{"id": 1}, {"id": 2}, {"id": 3}],
    "annotations": [
        {"image_id": 1, "caption": "A dog runs on the grass."},
        {"image_id": 1, "caption": "The dog is running across a lawn ."},
        {"image_id": 2, "caption": "Two men play football in a park"},
        {"image_id": 2, "caption": "Men are playing soccer ."},
        {"image_id": 3, "caption": "A red car parked on a street"},
    ],
}
RESULTS = [{"image_id": 1, "caption": "a dog runs on grass"},
           {"image_id": 2, "caption": "two men play soccer"},
           {"image_id": 3, "caption": "a car on the street", "score": 0.3}]


def _write(path, value):
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    return _write(tmp_path / "results.json", RESULTS), _write(tmp_path / "annotations.json", ANNOTATIONS)


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# input checks: every error names the file
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content,message", [
    (b'[{"image_id": 1, "caption": "caf\xe9 au lait"}]', r"not UTF-8 text: byte 0xe9 at offset 32 \(line 1\)"),
    (b'[{"image_id": 1, "caption": "a dog"}', "not valid JSON"),
    (b"", "empty file"),
    (b'{"1": "a dog", "2": "a cat"}', "an object of image id -> caption"),
    (json.dumps(ANNOTATIONS).encode(), "looks like an annotations file"),
    (b'"a dog"', "a JSON str, expected the COCO results format"),
    (b"[]", "results list is empty"),
    (b'["a dog"]', "entry 0 is a str"),
    (b'[{"image_id": 1, "text": "a dog"}]', "entry 0 has no 'caption'"),
    (b'[{"image_id": 1, "caption": 5}]', "caption must be a string"),
    (b'[{"image_id": 1.5, "caption": "a dog"}]', "image_id must be an integer or a string, got float"),
    (b'[{"image_id": true, "caption": "a dog"}]', "image_id must be an integer or a string, got bool"),
    (b'[{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}, {"image_id": 1, "caption": "c"}]',
     r"1 image\(s\) have more than one caption.*: 1$"),
    (b'[{"image_id": 1, "caption": "  "}, {"image_id": 2, "caption": ""}, {"image_id": 3, "caption": "x"}]',
     r"2 empty caption\(s\), for image\(s\) 1, 2"),
])
def test_malformed_results_files_raise_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "my results.json"
    path.write_bytes(content)
    with pytest.raises(EvaluationInputError, match=message) as info:
        load_results(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_results_file(tmp_path):
    with pytest.raises(EvaluationInputError, match="file not found"):
        load_results(tmp_path / "nope.json")


@pytest.mark.parametrize("annotations,message", [
    ([{"image_id": 1, "caption": "a"}], "a JSON list, expected COCO caption annotations"),
    ({"images": []}, 'no "annotations" key'),
    ({"annotations": []}, '"annotations" is empty'),
    ({"annotations": {"1": "a"}}, '"annotations" is a dict, expected a list'),
    ({"annotations": [{"image_id": 1}]}, r"annotations\[0\] has no 'caption'"),
    ({"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 7, "caption": "b"}]},
     r'1 image id\(s\) in "annotations" are not in "images": 7'),
    ({"images": [{"id": 1}, {"id": 2}], "annotations": [{"image_id": 1, "caption": "a"}]},
     r'1 image\(s\) of "images" have no reference captions: 2'),
    ({"annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": " "}]},
     r"empty reference caption\(s\) for 1 image\(s\): 1"),
    ({"images": [{"id": 1}, {"id": "1"}], "annotations": [{"image_id": 1, "caption": "a"}]},
     "are the same text"),
    ({"images": [{"id": 1}, {"id": 1}], "annotations": [{"image_id": 1, "caption": "a"}]}, "listed twice"),
])
def test_malformed_annotations_raise_errors_naming_the_file(tmp_path, annotations, message):
    path = _write(tmp_path / "annotations.json", annotations)
    with pytest.raises(EvaluationInputError, match=message) as info:
        load_annotations(path)
    assert str(info.value).startswith(f"{path}: ")


def test_non_utf8_annotations_name_the_annotations_file(tmp_path, files):
    results, _ = files
    bad = tmp_path / "refs.json"
    bad.write_bytes(b'{"annotations": [{"image_id": 1, "caption": "\xff"}]}')
    with pytest.raises(EvaluationInputError, match="not UTF-8") as info:
        evaluate_results(results, bad, metrics=FAST, tokenizer="python")
    assert str(info.value).startswith(f"{bad}: ")


def test_unknown_image_ids_are_listed(files, tmp_path):
    _, annotations = files
    results = _write(tmp_path / "r.json", RESULTS + [{"image_id": i, "caption": "x"} for i in range(100, 108)])
    with pytest.raises(EvaluationInputError) as info:
        evaluate_results(results, annotations, metrics=FAST, tokenizer="python")
    message = str(info.value)
    assert message.startswith(f"{results}: 8 of 11 result(s) are for image ids that {annotations} does not have")
    assert "100, 101, 102, 103, 104 (and 3 more)" in message


def test_images_without_a_result_are_an_error_unless_allowed(files, tmp_path):
    _, annotations = files
    partial = _write(tmp_path / "partial.json", RESULTS[:2])
    with pytest.raises(EvaluationInputError, match=r"no caption for 1 of the 3 images of .*: 3; ") as info:
        evaluate_results(partial, annotations, metrics=FAST, tokenizer="python")
    assert str(info.value).startswith(f"{partial}: ")
    report = evaluate_results(partial, annotations, metrics=FAST, tokenizer="python", allow_missing=True)
    assert report["num_images"] == 2 and [r["image_id"] for r in report["per_image"]] == [1, 2]
    assert report["missing_images"]["count"] == 1 and report["missing_images"]["image_ids"] == [3]
    assert "left out" in format_report(report)


def test_empty_captions_scored_as_empty_when_allowed(files, tmp_path):
    _, annotations = files
    results = _write(tmp_path / "r.json", [dict(r) for r in RESULTS])
    data = json.loads(results.read_text())
    data[0]["caption"] = ""
    _write(results, data)
    with pytest.raises(EvaluationInputError, match="empty caption"):
        evaluate_results(results, annotations, metrics=FAST, tokenizer="python")
    report = evaluate_results(results, annotations, metrics=FAST, tokenizer="python", allow_empty=True)
    assert report["per_image"][0]["Bleu_1"] < 1e-6 and report["per_image"][1]["Bleu_1"] > 0.5


def test_string_and_integer_ids_match_by_their_text(files):
    _, annotations = files
    as_text = [{"image_id": str(r["image_id"]), "caption": r["caption"]} for r in RESULTS]
    report = evaluate_results(as_text, annotations, metrics=FAST, tokenizer="python")
    assert [r["image_id"] for r in report["per_image"]] == [1, 2, 3]  # the annotations' own ids
    same = evaluate_results(RESULTS, annotations, metrics=FAST, tokenizer="python")
    assert report["corpus"] == same["corpus"]


def test_a_byte_order_mark_is_accepted(tmp_path, files):
    _, annotations = files
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(RESULTS).encode())
    assert evaluate_results(path, annotations, metrics=("bleu",), tokenizer="python")["num_images"] == 3


# ---------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------
def test_report_schema_and_provenance(files, tmp_path):
    results, annotations = files
    report = evaluate_results(results, annotations, metrics=(*FAST, "spice"), tokenizer="python", split="val")
    assert report["format"] == REPORT_FORMAT and report["split"] == "val" and report["num_images"] == 3
    assert list(report["corpus"]) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
    assert report["tokenizer"] == "ptb-python"
    assert report["versions"]["pycocoevalcap"] == "1.2" and report["versions"]["sacrebleu"]
    assert report["provenance"]["results"] == {"path": str(results.resolve()), "sha256": _sha256(results)}
    assert report["provenance"]["annotations"]["sha256"] == _sha256(annotations)
    assert report["references_per_image"] == {"min": 1, "max": 2, "total": 5}
    assert [set(r) for r in report["per_image"]] == [{"image_id", "caption", *report["corpus"]}] * 3
    # pycocoevalcap's corpus ROUGE-L / CIDEr are the means of its per-image scores
    for key in ("ROUGE_L", "CIDEr"):
        assert sum(r[key] for r in report["per_image"]) / 3 == pytest.approx(report["corpus"][key], abs=1e-12)
    if coco_module.spice_unavailable_reason() is not None:
        assert "SPICE" not in report["corpus"] and "SPICE" in report["unavailable"]
    sacre = report["sacrebleu"]
    assert sacre["signature"].startswith("nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "DIFFERENT tokenisation" in sacre["label"] and 0 <= sacre["score"] <= 100
    out = write_report(report, tmp_path / "deep" / "scores.json")
    assert json.loads(out.read_text())["corpus"] == report["corpus"]


def test_in_memory_inputs_are_hashed(files):
    report = evaluate_results(RESULTS, ANNOTATIONS, metrics=("bleu",), tokenizer="python")
    results_provenance = report["provenance"]["results"]
    assert results_provenance["path"] is None and len(results_provenance["sha256"]) == 64
    changed = evaluate_results([dict(RESULTS[0], caption="a cat"), *RESULTS[1:]], ANNOTATIONS, metrics=("bleu",),
                               tokenizer="python")
    assert changed["provenance"]["results"]["sha256"] != results_provenance["sha256"]


def test_spice_is_scored_when_available_and_failures_are_reported(monkeypatch):
    monkeypatch.setattr(results_module, "spice_unavailable_reason", lambda: None)
    monkeypatch.setattr(results_module, "score_spice",
                        lambda hyps, refs, tokenizer: (0.25, {key: 0.1 * key for key in hyps}))
    report = evaluate_results(RESULTS, ANNOTATIONS, metrics=("bleu", "spice"), tokenizer="python")
    assert report["corpus"]["SPICE"] == 0.25 and list(report["corpus"])[-1] == "SPICE"
    assert report["per_image"][2]["SPICE"] == pytest.approx(0.3) and "SPICE" not in report["unavailable"]

    def broken(*args):
        raise RuntimeError("java.lang.OutOfMemoryError")

    monkeypatch.setattr(results_module, "score_spice", broken)
    report = evaluate_results(RESULTS, ANNOTATIONS, metrics=("bleu", "spice"), tokenizer="python")
    assert "OutOfMemoryError" in report["unavailable"]["SPICE"] and report["corpus"]["Bleu_1"] > 0


def test_spice_requirements_are_stated_precisely(monkeypatch):
    monkeypatch.setattr(coco_module, "_java_version", lambda: 'openjdk version "17.0.15" 2025-04-15')
    assert coco_module.java_major_version() == 17
    reason = coco_module.spice_unavailable_reason()
    assert "Java 17" in reason and "Java 8" in reason  # this Java is too new, whatever the jars
    monkeypatch.setattr(coco_module, "_java_version", lambda: 'java version "1.8.0_312"')
    assert coco_module.java_major_version() == 8
    reason = coco_module.spice_unavailable_reason()
    if reason is not None:  # with Java 8 only the missing CoreNLP jars can stand in the way
        assert "stanford-corenlp-3.6.0" in reason and "Java" not in reason.split(";")[-1]
    with pytest.raises(RuntimeError, match="SPICE unavailable"):
        monkeypatch.setattr(coco_module, "spice_unavailable_reason", lambda: "no jars")
        coco_module.score_spice({1: "a"}, {1: ["a"]})


def test_sacrebleu_pads_variable_reference_counts():
    import sacrebleu

    hyps = ["a dog runs on the grass .", "two men play"]
    refs = [["a dog runs on grass .", "the dog runs ."], ["two men play soccer"]]
    ours = sacrebleu_corpus(hyps, refs)
    direct = sacrebleu.corpus_bleu(hyps, [["a dog runs on grass .", "two men play soccer"], ["the dog runs .", None]])
    assert ours["score"] == pytest.approx(direct.score, abs=1e-12)
    assert ours["signature"].startswith("nrefs:var|") and ours["references_per_image"] == {"min": 1, "max": 2}
    assert ours["hypotheses_ending_in_tokenised_period"] == 1
    with pytest.raises(ValueError, match="at least one reference"):
        sacrebleu_corpus(["a"], [[]])


def test_format_report_is_a_readable_table(files):
    results, annotations = files
    report = evaluate_results(results, annotations, metrics=(*FAST, "spice"), tokenizer="python")
    report["unavailable"]["SPICE"] = "needs Java 8"
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0] == "results: 3 images, tokenizer ptb-python"
    assert lines[1].split() == ["metric", "score"]
    assert [line.split()[0] for line in lines[3:10]] == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr",
                                                         "SPICE"]
    assert "SPICE unavailable: needs Java 8" in text
    assert re.search(r"sacreBLEU \d+\.\d\d \(0-100\)  nrefs:var\|", text) and "not comparable" in text


# ---------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["evaluate"], "give either MODEL"),
    (["evaluate", "some/model", "--results", "r.json"], "not both"),
    (["evaluate", "--results", "r.json"], "--results needs the references"),
    (["evaluate", "--results", "r.json", "--annotations", "a.json", "--flickr8k", "x"], "not both"),
    (["evaluate", "--results", "r.json", "--annotations", "a.json", "--beam-size", "2", "--samples", "3"],
     "--samples, --beam-size only apply to scoring a MODEL"),
    (["evaluate", "some/model", "--allow-missing"], "--allow-missing only applies to --results"),
    (["evaluate", "--results", "r.json", "--annotations", "a.json", "--metrics", "bleu,bertscore"],
     "--metrics: unknown"),
])
def test_evaluate_argument_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("captioner evaluate: error: ") and message in err


def test_java_tokenizer_without_java_is_a_clear_error(monkeypatch, capsys):
    import captioner.data.ptb as ptb_module

    monkeypatch.setattr(ptb_module.shutil, "which", lambda name: None)
    assert main(["evaluate", "--results", "r.json", "--annotations", "a.json", "--tokenizer", "java"]) == 2
    assert "--tokenizer java needs Java" in capsys.readouterr().err


def test_evaluate_command_reports_a_bad_results_file(files, tmp_path, capsys):
    _, annotations = files
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x80\x81")
    assert main(["evaluate", "--results", str(bad), "--annotations", str(annotations)]) == 2
    assert f"captioner evaluate: error: {bad}: not UTF-8" in capsys.readouterr().err


def test_evaluate_results_on_coco_mini(coco_mini_root, tmp_path, capsys):
    """One reference per image as the result, against the official annotation file itself."""
    annotations = coco_mini_root / "annotations" / "captions_val2017.json"
    data = json.loads(annotations.read_text(encoding="utf-8"))
    first: dict = {}
    for annotation in data["annotations"]:
        first.setdefault(annotation["image_id"], annotation["caption"])
    results = _write(tmp_path / "results.json", [{"image_id": i, "caption": c} for i, c in first.items()])
    out = tmp_path / "scores.json"
    argv = ["evaluate", "--results", str(results), "--annotations", str(annotations), "--out", str(out),
            "--tokenizer", "python", "--metrics", "bleu,rouge,cider,spice", "--split", "val"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "val: 79 images, tokenizer ptb-python" in printed and "sacreBLEU" in printed
    report = json.loads(out.read_text())
    assert report["format"] == REPORT_FORMAT and report["tokenizer"] == "ptb-python"
    assert report["num_images"] == 79 and report["references_per_image"]["total"] == 395
    assert {r["image_id"] for r in report["per_image"]} == {image["id"] for image in data["images"]}
    assert all(isinstance(r["image_id"], int) for r in report["per_image"])
    # each result is one of its image's references: BLEU and ROUGE-L are (numerically) perfect
    assert report["corpus"]["Bleu_4"] == pytest.approx(1.0, abs=1e-9)
    assert report["corpus"]["ROUGE_L"] == pytest.approx(1.0, abs=1e-12) and report["corpus"]["CIDEr"] > 1
    assert report["provenance"]["results"] == {"path": str(results.resolve()), "sha256": _sha256(results)}
    assert report["provenance"]["annotations"] == {"path": str(annotations.resolve()), "sha256": _sha256(annotations)}
    assert report["provenance"]["command"]  # the command line that ran (here pytest's)
    sacre = report["sacrebleu"]
    assert re.fullmatch(r"nrefs:5\|case:mixed\|eff:no\|tok:13a\|smooth:exp\|version:[\d.]+", sacre["signature"])
    assert sacre["score"] == pytest.approx(100.0)
    if coco_module.spice_unavailable_reason() is not None:
        assert "SPICE" in report["unavailable"]
    assert set(report["versions"]) >= {"pycocoevalcap", "tokenizer", "sacrebleu", "captioner"}


@pytest.mark.slow
def test_evaluate_results_on_coco_mini_with_all_metrics(coco_mini_root, tmp_path):
    if not java_available():
        pytest.skip("METEOR and the Java tokenizer need Java")
    annotations = coco_mini_root / "annotations" / "captions_val2017.json"
    data = json.loads(annotations.read_text(encoding="utf-8"))
    first: dict = {}
    for annotation in data["annotations"]:
        first.setdefault(annotation["image_id"], annotation["caption"])
    results = [{"image_id": i, "caption": c} for i, c in first.items()]
    assert len(results) == 79
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--results", str(_write(tmp_path / "r.json", results)), "--annotations",
                 str(annotations), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tokenizer"] == "ptb-java" and report["corpus"]["METEOR"] == pytest.approx(1.0)
    assert "meteor" in report["versions"]


# ---------------------------------------------------------------------------------------------------
# golden numbers through the results path
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flickr8k_files(flickr8k_root, tmp_path_factory):
    """Flickr8k test split as files: results = caption #0 of each image, annotations = captions #1-#4."""
    folder = tmp_path_factory.mktemp("flickr8k-coco")
    with pytest.warns(UserWarning, match="2258277193_586949ec62"):  # the release's one broken entry
        full = flickr8k_annotations(flickr8k_root, "test")
        annotations = flickr8k_annotations(flickr8k_root, "test", caption_numbers=(1, 2, 3, 4))
    results = [{"image_id": a["image_id"], "caption": a["caption"]} for a in full["annotations"]
               if a["caption_number"] == 0]
    assert len(results) == 1000 and len(annotations["annotations"]) == 4000
    return _write(folder / "results.json", results), _write(folder / "annotations.json", annotations)


def _check_golden(report, keys):
    assert set(report["corpus"]) == set(keys)
    for key in keys:
        assert round(report["corpus"][key], 5) == GOLDEN[key], key
    assert report["num_images"] == 1000 and report["references_per_image"]["total"] == 4000


def test_flickr8k_golden_numbers_through_results_files_python_tokenizer(flickr8k_files):
    results, annotations = flickr8k_files
    report = evaluate_results(results, annotations, tokenizer="python", metrics=FAST, split="test")
    assert report["tokenizer"] == "ptb-python"
    _check_golden(report, ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"])
    import sacrebleu  # sacreBLEU beside: its own number, on the raw text with all four references

    hyps = [r["caption"] for r in json.loads(results.read_text())]
    refs = [[a["caption"] for a in json.loads(annotations.read_text())["annotations"][k::4]] for k in range(4)]
    assert report["sacrebleu"]["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score, abs=1e-9)
    assert report["sacrebleu"]["signature"].startswith("nrefs:4|")


def test_flickr8k_golden_numbers_through_results_files_java_tokenizer(flickr8k_files):
    if not java_available():
        pytest.skip("the Java tokenizer needs Java")
    results, annotations = flickr8k_files
    report = evaluate_results(results, annotations, tokenizer="java", metrics=FAST)
    assert report["tokenizer"] == "ptb-java"
    _check_golden(report, ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"])


@pytest.mark.slow
def test_flickr8k_golden_numbers_with_meteor(flickr8k_files):
    if not java_available():
        pytest.skip("METEOR needs Java")
    results, annotations = flickr8k_files
    report = evaluate_results(results, annotations, tokenizer="auto")
    _check_golden(report, list(GOLDEN))


@pytest.mark.filterwarnings("ignore:flickr8k:UserWarning")
def test_evaluate_command_with_flickr8k_references(flickr8k_root, flickr8k_files, tmp_path):
    results, _ = flickr8k_files
    out = tmp_path / "scores.json"
    assert main(["evaluate", "--results", str(results), "--flickr8k", str(flickr8k_root), "--tokenizer", "python",
                 "--metrics", "bleu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["split"] == "test" and report["num_images"] == 1000
    # caption #0 is among the references now (all five): BLEU-4 is (numerically) perfect
    assert report["corpus"]["Bleu_4"] == pytest.approx(1.0, abs=1e-9)
    provenance = report["provenance"]["annotations"]
    assert provenance["source"] == "flickr8k" and provenance["split"] == "test"
    token_file = flickr8k_root / "Flickr8k_text" / "Flickr8k.token.txt"
    assert provenance["files"]["Flickr8k_text/Flickr8k.token.txt"] == _sha256(token_file)
