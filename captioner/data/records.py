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
    """What a reader or the feature extractor left out, counted by reason.

    Every skipped item is kept once in `details` (its file and entry, and why); `examples` holds the
    first `max_examples` of each reason, which the one-line summary and the warning show. The same
    (reason, detail) added twice (e.g. by merging a report into one that already holds it) is one item."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5
    details: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, detail: str) -> None:
        every = self.details.setdefault(reason, [])
        if detail in every:
            return
        every.append(detail)
        self.counts[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(detail)

    def merge(self, other: "SkipReport") -> None:
        for reason, count in other.counts.items():
            listed = other.details.get(reason) or other.examples.get(reason, [])
            for detail in listed:
                self.add(reason, detail)
            # counted without a detail to show (e.g. read back from a summary of examples only)
            unnamed = count - len(listed)
            if unnamed > 0:
                self.counts[reason] += unnamed

    @classmethod
    def from_dict(cls, data: dict) -> "SkipReport":
        """The report that `to_dict` wrote (with or without every detail)."""
        report = cls()
        details = data.get("details") or data.get("examples") or {}
        for reason, count in data.get("counts", {}).items():
            listed = list(details.get(reason, []))
            for detail in listed:
                report.add(reason, detail)
            if count > len(report.details.get(reason, [])):
                report.counts[reason] += count - len(report.details.get(reason, []))
        return report

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "nothing skipped"
        parts = []
        for reason, count in sorted(self.counts.items()):
            shown = self.examples.get(reason, [])
            more = f"; and {count - len(shown)} more" if count > len(shown) else ""
            parts.append(f"{count} x {reason} (e.g. {'; '.join(shown)}{more})")
        return f"skipped {self.total}: " + " | ".join(parts)

    def warn(self, source: str) -> None:
        """One warning that says what was skipped, if anything was."""
        if self.total:
            warnings.warn(f"{source}: {self.summary()}", stacklevel=2)

    def to_dict(self, full: bool = False) -> dict:
        """total, counts and examples; with `full`, also every item once under "details"."""
        data = {"total": self.total, "counts": dict(self.counts), "examples": self.examples}
        if full:
            data["details"] = self.details
        return data


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
