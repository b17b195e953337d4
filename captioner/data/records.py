"""The one internal form every data set reader produces: images with their reference captions."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One image and its reference captions, untouched (never truncated or mapped to <unk>).

    image_id: a stable string id (a Flickr file stem such as "1000268201_693b08cb28", or a COCO
    image id written as a string); path: the image file; split: "train", "val" or "test"."""

    image_id: str
    path: Path
    captions: tuple[str, ...]
    split: str


@dataclass
class SkipReport:
    """What a reader or the feature extractor left out, counted by reason, with a few examples."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(detail)

    def merge(self, other: "SkipReport") -> None:
        for reason, count in other.counts.items():
            self.counts[reason] += count
            kept = self.examples.setdefault(reason, [])
            kept.extend(other.examples.get(reason, [])[: max(0, self.max_examples - len(kept))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "nothing skipped"
        parts = []
        for reason, count in sorted(self.counts.items()):
            shown = "; ".join(self.examples.get(reason, []))
            parts.append(f"{count} x {reason} (e.g. {shown})")
        return f"skipped {self.total}: " + " | ".join(parts)

    def warn(self, source: str) -> None:
        """One warning that says what was skipped, if anything was."""
        if self.total:
            warnings.warn(f"{source}: {self.summary()}", stacklevel=2)

    def to_dict(self) -> dict:
        return {"total": self.total, "counts": dict(self.counts), "examples": self.examples}


@dataclass
class CaptionRecords:
    """A data set as read from disk: records per split and what was skipped while reading."""

    source: str
    splits: dict[str, list[ImageRecord]]
    skipped: SkipReport = field(default_factory=SkipReport)

    def all_records(self) -> list[ImageRecord]:
        return [record for name in self.splits for record in self.splits[name]]

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {"images": len(records), "captions": sum(len(r.captions) for r in records)}
                for name, records in self.splits.items()}
