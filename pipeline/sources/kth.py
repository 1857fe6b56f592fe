"""KTH Action: `personNN_ACTION_dD_uncomp.avi` files, persons 1-16 train, 17-25 test.

Labels come from the file name. KTH's sequence file (`00sequences.txt`, lines like
`person01_boxing_d1   frames  1-95, 96-185, 186-245, 246-360`, 1-based inclusive) is honoured
when given, or found at the input's root: windows then stay inside one sub-sequence.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.sources.videos import VideoSourceBase, video_item

ACTIONS = ("boxing", "handclapping", "handwaving", "jogging", "running", "walking")
TRAIN_PERSONS = tuple(range(1, 17))
TEST_PERSONS = tuple(range(17, 26))
NATIVE_SIZE = (160, 120)
_NAME = re.compile(r"^person(\d{2})_([a-z]+)_d([1-4])(?:_uncomp)?\.avi$")
_SEQ_LINE = re.compile(r"^\s*(person\d{2}_[a-z]+_d[1-4])\s+frames\s+(.+?)\s*$")


def kth_name(person: int, action: str, scenario: int) -> str:
    return f"person{person:02d}_{action}_d{scenario}"


def parse_kth_name(filename: str) -> dict | None:
    """`person05_running_d3_uncomp.avi` -> {person: 5, action: running, scenario: d3}, or None."""
    m = _NAME.match(filename)
    if not m or m.group(2) not in ACTIONS or not 1 <= int(m.group(1)) <= 25:
        return None
    return {"person": int(m.group(1)), "action": m.group(2), "scenario": f"d{m.group(3)}"}


def parse_sequences(text: str) -> dict[str, list[tuple[int, int]]]:
    """KTH sequence file -> {video name: [(start, stop) half-open, 0-based]}; other lines ignored."""
    out: dict[str, list[tuple[int, int]]] = {}
    for line in text.splitlines():
        m = _SEQ_LINE.match(line)
        if not m:
            continue
        ranges = []
        for part in m.group(2).split(","):
            a, _, b = part.strip().partition("-")
            if a.strip().isdigit() and b.strip().isdigit():
                ranges.append((int(a) - 1, int(b)))
        out[m.group(1)] = ranges
    return out


@dataclass
class KTHSource(VideoSourceBase):
    """KTH's .avi files under `input` (a folder or s3:// prefix)."""

    input: str
    sequences: str | None = None         # sequence file; None -> `<input>/00sequences.txt` if any
    expected_size: tuple[int, int] | None = NATIVE_SIZE  # native (w, h); others are skipped

    def describe(self) -> dict:
        return {"dataset": "kth", "input": self.input, "sequences": self._sequence_uri(),
                "expected_size": self.expected_size}

    def _sequence_uri(self) -> str | None:
        if self.sequences:
            return self.sequences
        loc = self.location
        return loc.uri_of("00sequences.txt") if loc.exists("00sequences.txt") else None

    def items(self) -> list[dict]:
        seq_uri = self._sequence_uri()
        ranges = {}
        if seq_uri:
            from pipeline.storage import Location

            ranges = parse_sequences(Location.of(seq_uri).read_bytes().decode())
        items = []
        for rel in self.location.list_files():
            if not rel.lower().endswith(".avi"):
                continue
            base = rel.rsplit("/", 1)[-1]
            labels = parse_kth_name(base)
            if labels is None:
                items.append({"kind": "error", "path": self.location.uri_of(rel),
                              "reason": "file name is not personNN_ACTION_dD_uncomp.avi"})
                continue
            split = "train" if labels["person"] in TRAIN_PERSONS else "test"
            name = kth_name(labels["person"], labels["action"], int(labels["scenario"][1:]))
            items.append(video_item(rel, name, split, labels, ranges.get(name),
                                    self.expected_size))
        return items
