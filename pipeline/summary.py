"""The end-of-run summary: counts and rates as a dict, and as a table for humans."""
from __future__ import annotations


def build_summary(result: dict, shards: list[dict], seconds: float, items: int) -> dict:
    """Counts from the sink's merged result (videos, errors, shards) and the wall time."""
    rows = {s: sum(x["rows"] for x in shards if x["split"] == s) for s in ("train", "test")}
    decoded = sum(v["frames"] for v in result["videos"])
    return {
        "inputs": items,
        "videos_read": len(result["videos"]),
        "videos_skipped": len(result["errors"]),
        "windows_train": rows["train"],
        "windows_test": rows["test"],
        "frames_decoded": decoded,
        "frames_written": sum(s["frames"] for s in shards),
        "bytes": sum(s["bytes"] for s in shards),
        "shards": len(shards),
        "seconds": round(seconds, 3),
        "frames_per_s": round(decoded / seconds, 1) if seconds > 0 else None,
    }


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def format_table(summary: dict, title: str = "prepare") -> str:
    lines = [
        ("videos read", f"{summary['videos_read']:,}"),
        ("videos skipped", f"{summary['videos_skipped']:,}"
         + ("  (reasons in errors.jsonl)" if summary["videos_skipped"] else "")),
        ("windows (train)", f"{summary['windows_train']:,}"),
        ("windows (test)", f"{summary['windows_test']:,}"),
        ("frames decoded", f"{summary['frames_decoded']:,}"),
        ("frames in shards", f"{summary['frames_written']:,}"),
        ("shard bytes", f"{_human_bytes(summary['bytes'])} in {summary['shards']} files"),
        ("wall time", f"{summary['seconds']:.1f} s"),
        ("frames/s decoded", f"{summary['frames_per_s']:,.0f}" if summary["frames_per_s"] else "-"),
    ]
    width = max(len(k) for k, _ in lines)
    rule = "-" * (width + 24)
    body = "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
    return f"{title}\n{rule}\n{body}\n{rule}"
