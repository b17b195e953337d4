"""Training batches planned once per epoch and gathered on the training device.

Every training caption is encoded once (`encode_captions`' encoding) into tensors that stay on the
training device. An epoch is an order over captions that depends only on (seed, epoch); with length
bucketing, captions of similar length share a batch, so a batch pads to its own short maximum. Each
batch is cut into contiguous shares, one per process of a multi-process run. All of this is planned
on the CPU when an epoch starts (caption lengths and images are known there), so a step only slices
and gathers device tensors: no host work and no device-to-host wait.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from captioner.data.batching import CaptionText, encode_captions, teacher_forcing
from captioner.data.vocabulary import Vocabulary

# Batches whose captions are sorted by length together: wide enough that most batches hold
# captions of one length, narrow enough that an epoch still mixes the whole data set.
BUCKET_WINDOW = 100

# Words that trade places in the captions of a mirrored image (flip augmentation).
MIRRORED_WORDS = (("left", "right"),)
_FLIP_STREAM = 0x666C6970  # keeps the flips' random stream apart from the epoch order's


def mirror_word_ids(vocabulary: Vocabulary, pairs: Sequence[tuple[str, str]] = MIRRORED_WORDS) -> torch.Tensor:
    """A lookup (vocabulary size,) that sends each word id to that of its mirror word: `pairs`' words
    swapped where both are in the vocabulary, every other id to itself."""
    lookup = torch.arange(len(vocabulary))
    for a, b in pairs:
        if a in vocabulary.index and b in vocabulary.index:
            lookup[vocabulary.index[a]], lookup[vocabulary.index[b]] = vocabulary.index[b], vocabulary.index[a]
    return lookup


def mix_seed(*parts: int) -> int:
    """A 64-bit seed from a tuple of integers (seed, epoch, step, ...): distinct tuples, unrelated seeds."""
    return int(np.random.SeedSequence([part % 2**64 for part in parts]).generate_state(1, np.uint64)[0])


@dataclass
class EncodedCaptions:
    """All captions of a split, encoded once. targets (Ncap, T) (<eos>, then <pad>) and lengths (Ncap,)
    on the training device; on the CPU, lengths again and each caption's image (`owner`), which plan
    the batches. A split's captions are stored image after image: image i owns captions
    first[i]..first[i] + counts[i] - 1."""

    targets: torch.Tensor
    lengths: torch.Tensor
    host_lengths: torch.Tensor
    owner: torch.Tensor
    first: torch.Tensor
    counts: torch.Tensor
    vocabulary: Vocabulary

    @classmethod
    def build(cls, captions: Sequence[Sequence[str]], vocabulary: Vocabulary, max_length: int | None,
              device: torch.device | str) -> "EncodedCaptions":
        """Encode `captions` (per image, each cut to `max_length` words) and put them on `device`."""
        text = encode_captions([c for image in captions for c in image], vocabulary, max_length)
        counts = torch.tensor([len(image) for image in captions], dtype=torch.long)
        first = torch.cumsum(counts, 0) - counts
        owner = torch.repeat_interleave(torch.arange(len(captions)), counts)
        return cls(text.targets.to(device), text.lengths.to(device), text.lengths, owner, first, counts, vocabulary)

    def __len__(self) -> int:
        return len(self.owner)


@dataclass
class ShardBatch:
    """This process's share of one batch: captions [start, stop) of the batch's `total`, as
    teacher-forcing tensors on the training device, and the images they read: `images` (split
    indices, on the device) and `host_images` (the same on the CPU, for inputs read from disk).
    Caption n belongs to image images[image_index[n]]."""

    images: torch.Tensor
    host_images: torch.Tensor
    image_index: torch.Tensor
    text: CaptionText
    start: int
    stop: int
    total: int


@dataclass
class EpochPlan:
    """One epoch of this process's shares, batch after batch: caption ids, image ids and each
    caption's image position, concatenated on the device and cut by the CPU offsets; per batch its
    padded length (that of its longest caption, over all processes) and this process's share."""

    encoded: EncodedCaptions
    captions: torch.Tensor
    images: torch.Tensor
    host_images: torch.Tensor
    image_index: torch.Tensor
    caption_offsets: list[int]
    image_offsets: list[int]
    steps: list[int]
    shares: list[tuple[int, int, int]]

    def __len__(self) -> int:
        return len(self.steps)

    def batch(self, index: int) -> ShardBatch:
        """Batch `index`: slices and row gathers of device tensors, its length known on the CPU."""
        c0, c1 = self.caption_offsets[index], self.caption_offsets[index + 1]
        i0, i1 = self.image_offsets[index], self.image_offsets[index + 1]
        rows = self.captions[c0:c1]
        targets = self.encoded.targets[:, : self.steps[index]].index_select(0, rows)
        text = teacher_forcing(targets, self.encoded.vocabulary, self.encoded.lengths.index_select(0, rows))
        return ShardBatch(self.images[i0:i1], self.host_images[i0:i1], self.image_index[c0:c1], text,
                          *self.shares[index])


class CaptionSampler:
    """The epochs of a split's captions. An epoch holds every caption of every image when
    `captions_per_image` is 0 or at least the image's caption count, else `captions_per_image`
    captions of each image drawn anew each epoch. Its captions are cut into batches of (nearly, see
    below) batch_size x captions_per_image captions; with `captions_per_image` 0, batch_size x the
    typical (median) number of captions per image.

    Without bucketing, images come in a random order with their captions together, so a batch holds
    about batch_size images. With `length_bucketing`, the captions of each window of `window` batches
    are sorted by length before they are cut into batches, and the order of all batches is shuffled.

    The epoch's captions are cut into as many batches as full batches need, of sizes that differ by
    at most one caption (so no batch is left much smaller than the others, which would leave processes
    of a multi-process run without captions). Each batch is then shared by the `world_size` processes
    in contiguous runs of captions. With `shard_images` a process encodes only the images of its own
    captions; without, every process encodes all images of the batch, as an encoder that normalises
    with batch statistics needs for the result not to depend on the number of processes.

    With `flip_probability` > 0 (flip augmentation), each image of an epoch is replaced by its mirror
    image with that probability, drawn from (seed, epoch) apart from the order (which stays as without
    flips): a planned batch then names image N + i (N images; inputs as MirroredFeatures holds them)
    and the captions of image i with "left" and "right" swapped (`mirror_word_ids`)."""

    def __init__(self, encoded: EncodedCaptions, batch_size: int, captions_per_image: int, seed: int,
                 length_bucketing: bool = False, window: int = BUCKET_WINDOW, rank: int = 0, world_size: int = 1,
                 shard_images: bool = True, flip_probability: float = 0.0):
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"flip_probability must lie in [0, 1], got {flip_probability}")
        self.encoded = encoded
        self.flip_probability = flip_probability
        # What the batches read their targets from: the captions, then (flips) the same mirrored.
        self.rows = encoded
        if flip_probability > 0:
            mirrored = mirror_word_ids(encoded.vocabulary).to(encoded.targets.device)[encoded.targets]
            self.rows = dataclasses.replace(encoded, targets=torch.cat([encoded.targets, mirrored]),
                                            lengths=torch.cat([encoded.lengths, encoded.lengths]))
        self.seed = seed
        self.length_bucketing = length_bucketing
        self.window = window
        self.rank = rank
        self.world_size = world_size
        self.shard_images = shard_images
        counts = encoded.counts
        self.limit = captions_per_image if captions_per_image > 0 else None
        per_image = captions_per_image if captions_per_image > 0 else int(counts.median())
        self.batch_captions = batch_size * max(per_image, 1)
        self.epoch_captions = int(counts.sum() if self.limit is None else counts.clamp(max=self.limit).sum())
        if self.epoch_captions == 0:
            raise ValueError("the training split has no captions")
        self.batches_per_epoch = -(-self.epoch_captions // self.batch_captions)
        smallest = self.epoch_captions // self.batches_per_epoch
        if smallest < world_size:
            raise ValueError(f"train.batch_size: batches of {smallest} captions cannot be shared by {world_size} "
                             "processes; use larger batches or fewer processes")

    def order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Epoch `epoch` as caption ids in order (CPU) and the batch boundaries (batches + 1,): batch b
        is order[bounds[b]:bounds[b + 1]]. A pure function of (seed, epoch)."""
        encoded = self.encoded
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        total, images = len(encoded), len(encoded.counts)
        # Captions grouped by image, in a random order within each; keep the first `limit` of each.
        by_key = torch.argsort(torch.rand(total, generator=generator))
        grouped = by_key[torch.argsort(encoded.owner[by_key], stable=True)]
        if self.limit is not None:
            rank_in_image = torch.arange(total) - encoded.first[encoded.owner[grouped]]
            grouped = grouped[rank_in_image < self.limit]
        # Images in a random order, each with its captions together.
        position = torch.argsort(torch.randperm(images, generator=generator))
        order = grouped[torch.argsort(position[encoded.owner[grouped]], stable=True)]
        batches = self.batches_per_epoch
        bounds = torch.div(torch.arange(batches + 1) * len(order), batches, rounding_mode="floor")
        if not self.length_bucketing:
            return order, bounds
        sizes = bounds.diff()
        batch_of = torch.repeat_interleave(torch.arange(batches), sizes)
        longest = int(encoded.host_lengths.max())
        order = order[torch.argsort((batch_of // self.window) * (longest + 1) + encoded.host_lengths[order],
                                    stable=True)]
        shuffled = torch.randperm(batches, generator=generator)
        new_sizes = sizes[shuffled]
        new_bounds = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(new_sizes, 0)])
        new_batch_of = torch.repeat_interleave(torch.arange(batches), new_sizes)
        source = bounds[shuffled][new_batch_of] + torch.arange(len(order)) - new_bounds[new_batch_of]
        return order[source], new_bounds

    def flips(self, epoch: int) -> torch.Tensor | None:
        """Which images epoch `epoch` mirrors (bool (N,), CPU; None without flip augmentation). A pure
        function of (seed, epoch), so every process and a resumed run draw the same."""
        if self.flip_probability <= 0:
            return None
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, _FLIP_STREAM))
        return torch.rand(len(self.encoded.counts), generator=generator) < self.flip_probability

    def plan(self, epoch: int, device: torch.device | str) -> EpochPlan:
        """This process's shares of every batch of epoch `epoch`, put on `device` in one copy each."""
        encoded = self.encoded
        order, bounds = self.order(epoch)
        batches, images = len(bounds) - 1, len(encoded.counts)
        sizes = bounds.diff()
        batch_of = torch.repeat_interleave(torch.arange(batches), sizes)
        within = torch.arange(len(order)) - bounds[:-1][batch_of]
        low = torch.div(sizes * self.rank, self.world_size, rounding_mode="floor")
        high = torch.div(sizes * (self.rank + 1), self.world_size, rounding_mode="floor")
        mine = (within >= low[batch_of]) & (within < high[batch_of])
        captions, caption_batch = order[mine], batch_of[mine]
        readers = mine if self.shard_images else torch.ones_like(mine)
        # Keys batch * images + image: unique and sorted, they list each batch's images in turn.
        keys = torch.unique(batch_of[readers] * images + encoded.owner[order[readers]])
        batch_images = keys % images
        image_offsets = torch.cat([torch.zeros(1, dtype=torch.long),
                                   torch.cumsum(torch.bincount(keys // images, minlength=batches), 0)])
        caption_keys = caption_batch * images + encoded.owner[captions]
        image_index = torch.searchsorted(keys, caption_keys) - image_offsets[caption_batch]
        caption_offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(high - low, 0)])
        steps = torch.zeros(batches, dtype=torch.long).scatter_reduce(
            0, batch_of, encoded.host_lengths[order], "amax", include_self=False)
        shares = list(zip(low.tolist(), high.tolist(), sizes.tolist()))
        flipped = self.flips(epoch)
        if flipped is not None:  # the mirror image's row, and the mirrored copy of each of its captions
            captions = captions + len(encoded) * flipped[encoded.owner[captions]].long()
            batch_images = batch_images + images * flipped[batch_images].long()
        return EpochPlan(self.rows, captions.to(device), batch_images.to(device), batch_images,
                         image_index.to(device), caption_offsets.tolist(), image_offsets.tolist(), steps.tolist(),
                         shares)
