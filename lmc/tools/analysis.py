"""Memory addressing analysis (paper §4.5, Figure 7) and slot usage.

For labelled test clips (KTH actions), the memory is addressed twice per clip: from the long
clip through E_LMC (phase 1, what training stores) and from the short clip through E_MM (phase 2,
what inference recalls). If memory alignment worked, a short clip recalls the slots that long
clips *of the same action* address: the cosine similarity between long and short addressing
vectors is higher within a class than across classes.

Addressing vector of a clip. ``model.memory_addressing`` gives (q, s) weights: one softmax over
the s slots (Eq. 1) per query, q = h*w local queries (1 for query="global"). The default
``reduce="flatten"`` concatenates the q rows into one (q*s) vector, so two clips are similar only
when the *same cells* address the same slots (the local motion context of §3.3 keeps its
layout). ``reduce="mean"`` averages over the queries instead: an (s,) slot histogram of the
clip that ignores where in the frame each slot was addressed. Both are cosine-compared.

``center=True`` subtracts the uniform weight 1/s first. Addressing is a softmax over cosines
with no temperature, so on a 100-slot memory every weight stays near 1/s and raw cosine
similarities crowd near 1; centring compares the deviations from uniform and spreads them out
(an option, not the paper's definition; off by default).

Clips: short = window[:short_len] and long = window[long_start:long_start + long_len] with a
fixed ``long_start`` (0 by default) so the analysis is deterministic.

Outputs (``analyze_memory``): similarity.csv / similarity.png (long clips in rows, short clips in
columns, grouped by class), class_similarity.csv (class-mean matrix), slot_usage.csv /
slot_usage.png, summary.json. The pure functions below work on tensors and are unit-tested on
constructed cases. No Ray here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..checkpoint import checkpoint_config, load_for_inference
from ..plots import plot_similarity, plot_slot_usage
from .checks import check_device, check_output_folder

REDUCTIONS = ("flatten", "mean")


# ---------------------------------------------------------------------------------------------
# pure functions

def reduce_addressing(addressing: torch.Tensor, reduce: str = "flatten") -> torch.Tensor:
    """(N, q, s) addressing -> (N, q*s) ("flatten") or (N, s) ("mean" over the queries)."""
    if addressing.dim() != 3:
        raise ValueError(f"addressing must be (N, q, s), got {tuple(addressing.shape)}")
    if reduce == "flatten":
        return addressing.flatten(1)
    if reduce == "mean":
        return addressing.mean(dim=1)
    raise ValueError(f"reduce={reduce!r}: allowed {' | '.join(REDUCTIONS)}")


@torch.no_grad()
def addressing_vectors(model, clips: torch.Tensor, phase: int,
                       reduce: str = "flatten") -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors (N, D), raw addressing (N, q, s)) of ``clips`` (N, T, C, H, W): phase 1 reads
    the memory through E_LMC (long clips), phase 2 through E_MM (short clips)."""
    if phase not in (1, 2):
        raise ValueError(f"phase must be 1 (E_LMC, long clips) or 2 (E_MM, short clips), got {phase}")
    _, addressing = model.memory_addressing(clips, phase)        # (N, q, s), Eq. (1)
    return reduce_addressing(addressing, reduce), addressing


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Na, D) x (Nb, D) -> (Na, Nb) cosine similarities (float64)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()


def class_order(labels: Sequence[str]) -> list[int]:
    """Indices that group ``labels`` by class (classes sorted, original order kept inside)."""
    return sorted(range(len(labels)), key=lambda i: (str(labels[i]), i))


def similarity_by_class(sim: torch.Tensor, labels: Sequence[str]) -> dict:
    """Within- vs across-class statistics of a square long-vs-short similarity matrix whose
    row i and column i are the same clip (its long and its short part).

    Returns {"classes": [...], "class_matrix": C x C mean similarity (row class = long clips,
    column class = short clips), "within": mean over pairs of *different* clips of the same
    class, "across": mean over pairs of different classes, "same_clip": mean of the diagonal,
    "within_minus_across"}. A statistic with no pair is NaN.
    """
    n = len(labels)
    if sim.shape != (n, n):
        raise ValueError(f"similarity matrix {tuple(sim.shape)} does not match {n} labels")
    sim = sim.double()
    classes = sorted({str(x) for x in labels})
    idx = torch.tensor([classes.index(str(x)) for x in labels])
    same = idx[:, None] == idx[None, :]
    eye = torch.eye(n, dtype=torch.bool)

    def mean(mask):
        return float(sim[mask].mean()) if mask.any() else float("nan")

    class_matrix = [[mean((idx[:, None] == r) & (idx[None, :] == c)) for c in range(len(classes))]
                    for r in range(len(classes))]
    within, across = mean(same & ~eye), mean(~same)
    return {"classes": classes, "class_matrix": class_matrix, "within": within,
            "across": across, "same_clip": mean(eye), "within_minus_across": within - across}


def slot_usage(addressing: torch.Tensor, threshold: float | None = None) -> dict:
    """How the s slots are used by a set of (N, q, s) addressing vectors.

    Returns {"argmax_counts": per slot, how many queries address it most; "slots_argmax": how
    many slots are ever the argmax; "max_weight": per slot, its largest weight; "threshold";
    "slots_above_threshold": how many slots ever get more than ``threshold`` (default 2/s,
    twice the uniform weight); "mean_weight": per slot, its mean weight}.
    """
    if addressing.dim() != 3:
        raise ValueError(f"addressing must be (N, q, s), got {tuple(addressing.shape)}")
    s = addressing.shape[-1]
    flat = addressing.reshape(-1, s).double()                     # (N*q, s)
    threshold = 2.0 / s if threshold is None else float(threshold)
    counts = torch.bincount(flat.argmax(dim=1), minlength=s)
    max_weight = flat.max(dim=0).values
    return {"num_slots": s, "num_queries": flat.shape[0],
            "argmax_counts": counts.tolist(), "slots_argmax": int((counts > 0).sum()),
            "threshold": threshold, "max_weight": max_weight.tolist(),
            "slots_above_threshold": int((max_weight > threshold).sum()),
            "mean_weight": flat.mean(dim=0).tolist()}


# ---------------------------------------------------------------------------------------------
# data: labelled test windows

def collect_clips(data: str, *, max_per_class: int, label: str = "action",
                  window_len: int | None = None, batch_size: int = 16):
    """Up to ``max_per_class`` test windows per class, in the pipeline's fixed order ->
    (windows (N, T, C, H, W), labels [str], ids [(video_id, start)])."""
    import pipeline

    taken: dict[str, int] = {}
    windows, labs, ids = [], [], []
    for batch in pipeline.iter_test_windows(data, batch_size=batch_size, labels=(label,)):
        if not windows and not any(lab is not None for lab in batch[label]):
            # a source labels all its windows or none
            raise pipeline.DataError(
                f"{data}: the test windows carry no {label!r} labels (e.g. Moving-MNIST or a "
                "plain video folder); the memory analysis groups clips by class and needs "
                "labelled data such as KTH")
        for i, (v, s, lab) in enumerate(zip(batch["video_id"], batch["start"], batch[label])):
            if lab is None or taken.get(lab, 0) >= max_per_class:
                continue
            taken[lab] = taken.get(lab, 0) + 1
            w = batch["window"][i]
            windows.append(w if window_len is None else w[:window_len])
            labs.append(lab)
            ids.append((v, int(s)))
    return torch.stack(windows), labs, ids


# ---------------------------------------------------------------------------------------------
# pictures and files

def _write_matrix_csv(path, rows: list[str], cols: list[str], values) -> None:
    lines = [",".join(["", *cols])]
    for name, row in zip(rows, values):
        lines.append(",".join([name, *(f"{float(v):.6f}" for v in row)]))
    Path(path).write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# the command

def analyze_memory(checkpoint, data, output, *, preset=None, max_per_class: int = 8,
                   reduce: str = "flatten", center: bool = False, long_start: int = 0,
                   label: str = "action", threshold: float | None = None, batch_size: int = 16,
                   device=None, log=print) -> dict:
    """Figure 7 and the slot usage for ``checkpoint`` on the labelled test windows of ``data``
    (up to ``max_per_class`` per class). Returns the summary (also ``output/summary.json``)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}: allowed {' | '.join(REDUCTIONS)}")
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    check_device(device)
    check_output_folder(output, "similarity.csv and .png, class_similarity.csv, slot_usage.csv "
                                "and .png, summary.json")
    from pipeline import DatasetFacts, verify_dataset

    cfg = checkpoint_config(checkpoint, preset)
    if cfg.query == "none":
        raise ValueError("this checkpoint has no memory (query='none'): nothing to analyse")
    facts = DatasetFacts.read(data)
    verify_dataset(facts, ("test",), log=log)     # the files are the manifest's (sha256, rows)
    # the long clip (frames long_start .. long_start + long_len - 1) must fit a test window
    facts.require(
        who=f"the long clip from frame {long_start} (long_len {cfg.long_len})",
        channels=cfg.channels, img_size=cfg.img_size,
        test_len=max(cfg.short_len, long_start + cfg.long_len), splits=("test",))
    need = max(cfg.short_len, long_start + cfg.long_len)

    model, cfg = load_for_inference(checkpoint, preset, device)
    windows, labels, ids = collect_clips(data, max_per_class=max_per_class, label=label,
                                         window_len=need, batch_size=batch_size)
    summary = memory_report(model, windows, labels, ids, output, reduce=reduce, center=center,
                            long_start=long_start, threshold=threshold, batch_size=batch_size,
                            log=log, extra={"checkpoint": str(checkpoint), "data": str(data)})
    return summary


def memory_report(model, windows: torch.Tensor, labels: Sequence[str], ids: Sequence | None,
                  output, *, reduce: str = "flatten", center: bool = False, long_start: int = 0,
                  threshold: float | None = None, batch_size: int = 16, log=print,
                  extra: dict | None = None) -> dict:
    """The analysis of ``model`` on given windows (N, T, C, H, W) with class ``labels``.

    Long clip = window[long_start:long_start + long_len] (E_LMC), short = window[:short_len]
    (E_MM). ``center`` subtracts the uniform weight 1/s before the cosine (the deviation from
    uniform addressing; off by default). Writes similarity.csv/.png (rows: long clips, columns:
    short clips, grouped by class), class_similarity.csv, slot_usage.csv/.png, summary.json.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}: allowed {' | '.join(REDUCTIONS)}")
    cfg = model.cfg
    dev = next(model.parameters()).device
    ids = list(ids) if ids is not None else [(f"clip{i}", 0) for i in range(len(labels))]
    order = class_order(labels)
    windows = windows[order]
    labels = [str(labels[i]) for i in order]
    ids = [ids[i] for i in order]

    longs, shorts, raw_long, raw_short = [], [], [], []
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size].to(dev)
        v, a = addressing_vectors(model, w[:, long_start:long_start + cfg.long_len], 1, reduce)
        longs.append(v.cpu())
        raw_long.append(a.cpu())
        v, a = addressing_vectors(model, w[:, :cfg.short_len], 2, reduce)
        shorts.append(v.cpu())
        raw_short.append(a.cpu())
    long_v, short_v = torch.cat(longs), torch.cat(shorts)
    if center:   # deviation from the uniform addressing 1/s
        long_v, short_v = long_v - 1.0 / cfg.memory_slots, short_v - 1.0 / cfg.memory_slots
    sim = cosine_similarity_matrix(long_v, short_v)
    stats = similarity_by_class(sim, labels)
    usage = {"long clips (E_LMC)": slot_usage(torch.cat(raw_long), threshold),
             "short clips (E_MM)": slot_usage(torch.cat(raw_short), threshold)}
    how = reduce + (", centred" if center else "")

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{lab}:{v}:{s}" for lab, (v, s) in zip(labels, ids)]
    _write_matrix_csv(out / "similarity.csv", [f"long:{n}" for n in names],
                      [f"short:{n}" for n in names], sim.tolist())
    _write_matrix_csv(out / "class_similarity.csv", stats["classes"], stats["classes"],
                      stats["class_matrix"])
    plot_similarity(sim, labels, out / "similarity.png",
                    f"long vs short addressing ({how})\nwithin-class {stats['within']:.4f}, "
                    f"across-class {stats['across']:.4f}")
    u_long, u_short = usage.values()
    lines = ["slot,argmax_long,argmax_short,max_weight_long,max_weight_short,"
             "mean_weight_long,mean_weight_short"]
    for k in range(u_long["num_slots"]):
        lines.append(f"{k},{u_long['argmax_counts'][k]},{u_short['argmax_counts'][k]},"
                     f"{u_long['max_weight'][k]:.6f},{u_short['max_weight'][k]:.6f},"
                     f"{u_long['mean_weight'][k]:.6f},{u_short['mean_weight'][k]:.6f}")
    (out / "slot_usage.csv").write_text("\n".join(lines) + "\n")
    plot_slot_usage(usage, out / "slot_usage.png")
    keep = ("num_slots", "num_queries", "slots_argmax", "threshold", "slots_above_threshold",
            "argmax_counts")
    summary = {**(extra or {}), "reduce": reduce, "center": center, "long_start": long_start,
               "clips": len(labels),
               "clips_per_class": {c: labels.count(c) for c in stats["classes"]}, **stats,
               "slot_usage": {k: {kk: u[kk] for kk in keep} for k, u in usage.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if log:
        log(f"{len(labels)} clips in {len(stats['classes'])} classes "
            f"({', '.join(f'{c}: {n}' for c, n in summary['clips_per_class'].items())})")
        log(f"cosine similarity of long (E_LMC) vs short (E_MM) addressing, {how}: "
            f"within-class {stats['within']:.4f}, across-class {stats['across']:.4f} "
            f"(difference {stats['within_minus_across']:+.4f}); same clip {stats['same_clip']:.4f}")
        for k, u in usage.items():
            log(f"slot usage, {k}: {u['slots_argmax']}/{u['num_slots']} slots ever the argmax "
                f"of a query; {u['slots_above_threshold']} ever above weight {u['threshold']:.4g}")
        log(f"wrote {out}/similarity.png, similarity.csv, class_similarity.csv, "
            "slot_usage.png, slot_usage.csv, summary.json")
    return summary
