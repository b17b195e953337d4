"""Multi-process training against one process, and the caption sampler behind both.

Two gloo processes on the CPU (torch.multiprocessing, rendezvous through MASTER_ADDR/MASTER_PORT
and torchrun's RANK/WORLD_SIZE/LOCAL_RANK) train the tiny scenes model with each estimator; one
process trains the same global batches. Both run in float64, and the parameters must agree to
atol 1e-7. Some gradients are zero in exact arithmetic (an attention score's bias, as softmax ignores
a shift; a convolution's bias before BatchNorm) and computed as rounding noise, which two processes
sum in another order than one; Adam divides that noise by its eps (1e-8). In float32 the noise
(~1e-9) becomes steps of about the learning rate (5e-3), so no useful tolerance would hold; in
float64 (~1e-16) those parameters move by ~1e-10 an update (measured: differences up to 1.1e-9
after 5 updates, the others ~1e-10 or less), while a real error (a wrong scale, other
samples) shows after one update as a difference of order the learning rate.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import multiprocessing

from captioner import distributed
from captioner.data.vocabulary import tokenize
from captioner.data.datasets import load_dataset
from captioner.data.sampler import CaptionSampler, EncodedCaptions
from captioner.data.vocabulary import Vocabulary
from captioner.train import Trainer
from tests.test_training import TINY, tiny_config

# 12 images x 3 captions = 36 captions an epoch in 4 batches of 9, shared 4 + 5 by two processes.
PARITY = ["model.dropout=0.0", "model.initial_state_dropout=0.0", "train.batch_size=3", "train.captions_per_image=3",
          "train.max_steps=5"]
CASES = {  # name: (estimator, overrides); 5 updates cross the end of epoch 1 (4 batches): validation
    "wsram": ("wsram", ("estimator.sleep_update=true",)),
    "var": ("var", ("model.proposal=factorised", "estimator.expected_glimpse_probability=0.5")),
    "soft": ("soft", ()),
}
ATOL = 1e-7


def _config(name: str, *extra: str):
    estimator, overrides = CASES[name]
    return tiny_config(estimator, *PARITY, *overrides, *extra)


def _float64_splits(config):
    splits = load_dataset(config.data, config.model)
    for split in splits.values():
        split.inputs = split.inputs.double()
    return splits


def _train(name: str, out: Path, *extra: str, resume: bool = False) -> Trainer:
    config = _config(name, *extra)
    trainer = Trainer(config, out, resume=resume, splits=_float64_splits(config))
    trainer.train()
    return trainer


def _worker(rank: int, world_size: int, port: int, root: Path) -> None:
    """One of the processes torchrun would start: every case, then a run stopped and resumed."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    try:
        for name in CASES:
            # rank 1 is given a folder of its own, which must stay unwritten
            trainer = _train(name, root / (name if rank == 0 else f"{name}-rank{rank}"))
            assert trainer.distributed.world_size == world_size
            torch.save(trainer.model.state_dict(), root / f"{name}.rank{rank}.pt")
        _train("wsram", root / "resumed", "train.max_steps=2")
        trainer = _train("wsram", root / "resumed", resume=True)
        torch.save(trainer.model.state_dict(), root / f"resumed.rank{rank}.pt")
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    multiprocessing.spawn(_worker, args=(2, _free_port(), root), nprocs=2)
    return root


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, Trainer]:
    root = tmp_path_factory.mktemp("single")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return {name: _train(name, root / name) for name in CASES}
    finally:
        torch.set_default_dtype(previous)


def _assert_same_parameters(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert value.dtype == torch.float64 or not value.is_floating_point(), key
        torch.testing.assert_close(actual[key], value, rtol=0, atol=ATOL, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_train_the_parameters_of_one(name, two_processes, one_process):
    single = one_process[name]
    assert single.step == 5 and single.epoch == 1
    for rank in (0, 1):
        _assert_same_parameters(single.model.state_dict(), torch.load(two_processes / f"{name}.rank{rank}.pt"))
    # the log is of the whole batch: its loss and gradient norm are those of one process
    logs = [[json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
            for folder in (single.out_dir, two_processes / name)]
    assert [r["type"] for r in logs[0]] == [r["type"] for r in logs[1]] == ["train"] * 4 + ["validation", "train"]
    for a, b in zip(*logs):
        if a["type"] == "train":
            for key in ("loss", "grad_norm", "learning_rate", "nll_words"):
                assert b[key] == pytest.approx(a[key], rel=1e-9), key
        else:  # the validation split shared by two processes scores the same captions
            assert b["Bleu_4"] == a["Bleu_4"] and b["attention_accuracy"] == a["attention_accuracy"]


@pytest.mark.slow
def test_only_rank_0_writes_files(two_processes):
    for name in CASES:
        assert not (two_processes / f"{name}-rank1").exists()
        written = sorted(p.relative_to(two_processes / name).as_posix()
                         for p in (two_processes / name).rglob("*") if p.is_file())
        assert written == ["checkpoints/best.pt", "checkpoints/latest.pt", "config.yaml", "log.jsonl"]


@pytest.mark.slow
def test_a_run_stopped_and_resumed_by_two_processes_matches_one_process(two_processes, one_process):
    expected = one_process["wsram"].model.state_dict()
    for rank in (0, 1):
        _assert_same_parameters(expected, torch.load(two_processes / f"resumed.rank{rank}.pt"))


@pytest.mark.slow
def test_the_train_command_runs_under_torchrun(tmp_path):
    """`torchrun --standalone --nproc-per-node 2 -m captioner.cli train ...` needs no flag: both processes
    train, rank 0 alone prints and writes the run."""
    out = tmp_path / "run"
    overrides = [arg for item in [*TINY, "train.epochs=1"] for arg in ("--set", item)]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "captioner.cli", "train", "--out", str(out), "--quiet", *overrides],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("test split, beam size 3:") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and len(metrics["validation"]) == 1 and 0.0 <= metrics["Bleu_4"] <= 1.0
    assert len(json.loads((out / "test_captions.json").read_text())) == 4  # both shares of the test split
    assert (out / "model" / "model.safetensors").is_file() and (out / "checkpoints" / "best.pt").is_file()


# ---- the sampler ----------------------------------------------------------------------------------
def _captions() -> list[list[str]]:
    """40 images with 3 to 6 captions of 1 to 12 words."""
    generator = torch.Generator().manual_seed(0)
    words = "a red blue small big circle square on the left of".split()

    def caption() -> str:
        length = int(torch.randint(1, 13, (), generator=generator))
        return " ".join(words[int(i)] for i in torch.randint(len(words), (length,), generator=generator))

    return [[caption() for _ in range(int(torch.randint(3, 7, (), generator=generator)))] for _ in range(40)]


@pytest.fixture(scope="module")
def encoded() -> EncodedCaptions:
    captions = _captions()
    return EncodedCaptions.build(captions, Vocabulary.build(c for image in captions for c in image), 8, "cpu")


@pytest.mark.parametrize("bucketing", [True, False])
@pytest.mark.parametrize("per_image", [0, 2])
def test_an_epoch_holds_each_caption_once_in_batches_padded_to_their_own_length(encoded, bucketing, per_image):
    sampler = CaptionSampler(encoded, 4, per_image, seed=3, length_bucketing=bucketing, window=3)
    order, bounds = sampler.order(5)
    chosen = order.tolist()
    assert len(set(chosen)) == len(chosen) == sampler.epoch_captions
    per_owner = torch.bincount(encoded.owner[order], minlength=len(encoded.counts))
    assert torch.equal(per_owner, encoded.counts if per_image == 0 else encoded.counts.clamp(max=per_image))
    assert len(bounds) == sampler.batches_per_epoch + 1 and bounds.diff().max() - bounds.diff().min() <= 1
    assert sampler.batch_captions == 4 * (per_image or int(encoded.counts.median()))
    plan = sampler.plan(5, "cpu")
    for b in range(len(plan)):
        batch = plan.batch(b)
        rows = order[bounds[b]:bounds[b + 1]]
        lengths = encoded.host_lengths[rows]
        assert batch.text.targets.shape[1] == int(lengths.max())  # its own longest caption, no more
        assert torch.equal(batch.text.targets, encoded.targets[rows, : int(lengths.max())])
        assert torch.equal(batch.text.lengths, lengths)
        assert torch.equal(batch.images[batch.image_index], encoded.owner[rows])
        assert (batch.start, batch.stop, batch.total) == (0, len(rows), len(rows))


def test_bucketing_pads_less(encoded):
    def padding(bucketing: bool) -> int:
        sampler = CaptionSampler(encoded, 4, 0, seed=3, length_bucketing=bucketing, window=4)
        plan = sampler.plan(0, "cpu")
        return sum(plan.batch(b).text.mask.logical_not().sum().item() for b in range(len(plan)))

    assert padding(True) < padding(False) / 2


def test_the_order_depends_only_on_seed_and_epoch(encoded):
    def order(seed: int, epoch: int) -> list[int]:
        return CaptionSampler(encoded, 4, 2, seed=seed).order(epoch)[0].tolist()

    assert order(1, 2) == order(1, 2)
    assert order(1, 2) != order(1, 3) and order(1, 2) != order(2, 2)


@pytest.mark.parametrize("shard_images", [True, False])
def test_processes_share_each_batch_in_contiguous_runs(encoded, shard_images):
    order, bounds = CaptionSampler(encoded, 4, 0, seed=1).order(0)
    plans = [CaptionSampler(encoded, 4, 0, seed=1, rank=rank, world_size=3, shard_images=shard_images).plan(0, "cpu")
             for rank in range(3)]
    for b in range(len(plans[0])):
        shares = [plan.batch(b) for plan in plans]
        rows = order[bounds[b]:bounds[b + 1]]
        assert [(s.start, s.stop) for s in shares] == [(0, len(rows) // 3), (len(rows) // 3, 2 * len(rows) // 3),
                                                        (2 * len(rows) // 3, len(rows))]
        for share in shares:
            assert torch.equal(share.images[share.image_index], encoded.owner[rows[share.start:share.stop]])
            assert share.text.targets.shape[1] == int(encoded.host_lengths[rows].max())
            if not shard_images:  # every process encodes every image of the batch
                assert torch.equal(share.images, encoded.owner[rows].unique())


def test_every_caption_of_a_planned_batch_reads_its_own_image(tmp_path):
    """The sampler's image_index pairs each caption with its image: decoded captions of a real
    Trainer's batches (scenes) are among the captions of the image they are given, with and without
    length bucketing."""
    from captioner.config import load_config
    from captioner.train import Trainer

    for bucketing in (False, True):
        config = load_config(overrides=["data.scenes.train_size=60", "data.scenes.val_size=4", "data.scenes.test_size=4",
                                        "train.batch_size=8", f"train.length_bucketing={str(bucketing).lower()}"])
        trainer = Trainer(config, tmp_path / f"run-{bucketing}")
        train, vocabulary = trainer.splits["train"], trainer.vocabulary
        plan = trainer.sampler.plan(1, "cpu")
        checked = 0
        for index in range(len(plan)):
            shard = plan.batch(index)
            for n in range(len(shard.text)):
                image = int(shard.images[shard.image_index[n]])
                words = [vocabulary.words[int(t)] for t in shard.text.targets[n][: int(shard.text.lengths[n]) - 1]]
                references = [" ".join(tokenize(c)) for c in train.captions[image]]
                assert " ".join(words) in references, (words, references)
                checked += 1
        assert checked == trainer.sampler.epoch_captions == 60 * config.train.captions_per_image
