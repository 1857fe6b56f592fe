"""Human3.6M videos by subject: S1, S5, S6, S7, S8 train; S9, S11 test (RGB 64x64 by default).

The layout is the dataset's own (`S1/Videos/Directions 1.54138969.mp4`): the subject comes from a
path component `S<n>`, the action from the file name without its trailing take number, the
camera id is recorded as the scenario.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.sources.videos import VIDEO_EXTENSIONS, VideoSourceBase, video_item

TRAIN_SUBJECTS = (1, 5, 6, 7, 8)
TEST_SUBJECTS = (9, 11)
_SUBJECT = re.compile(r"^S(\d+)$")


def parse_h36m_path(rel: str) -> dict | None:
    """`S9/Videos/Walking 1.54138969.mp4` -> {person: 9, action: Walking, scenario: 54138969}."""
    parts = rel.split("/")
    subject = next((int(m.group(1)) for p in parts if (m := _SUBJECT.match(p))), None)
    if subject is None:
        return None
    stem = parts[-1].rsplit(".", 1)[0]
    name, _, camera = stem.rpartition(".")
    if not name:
        name, camera = stem, None
    action = re.sub(r"\s*\d+$", "", name).strip() or name
    return {"person": subject, "action": action, "scenario": camera}


@dataclass
class H36MSource(VideoSourceBase):
    """Human3.6M's video files under `input` (folder or s3:// prefix)."""

    input: str

    def describe(self) -> dict:
        return {"dataset": "h36m", "input": self.input}

    def items(self) -> list[dict]:
        items = []
        for rel in self.location.list_files():
            if not rel.lower().endswith(VIDEO_EXTENSIONS):
                continue
            labels = parse_h36m_path(rel)
            subject = labels and labels["person"]
            if subject in TRAIN_SUBJECTS or subject in TEST_SUBJECTS:
                split = "train" if subject in TRAIN_SUBJECTS else "test"
                items.append(video_item(rel, rel.rsplit(".", 1)[0], split, labels))
            else:
                items.append({"kind": "error", "path": self.location.uri_of(rel),
                              "reason": f"subject {subject and f'S{subject}'} is in neither "
                                        "split (train S1,S5-S8; test S9,S11)"})
        return items
