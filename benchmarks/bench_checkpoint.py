"""What verified checkpoints cost: the manifest (sha256 of every file) when a checkpoint is
written, the verification when a run chooses what to resume, per checkpoint of a preset.

    python benchmarks/bench_checkpoint.py                      # paper-mmnist (the paper's model)
    python benchmarks/bench_checkpoint.py --preset tiny --repeats 5

Writes a real checkpoint (model, the optimizer state of one Adam step, config) to a local run
folder and times, in one run: saving without the manifest, hashing the files into the
manifest, committing to the run folder, and ``newest_verified`` (size + sha256 of every file).
Prints seconds and the manifest's share of a checkpoint. Local disk; on S3 the verification
streams each file once more from the store (its read throughput bounds it).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import lmc  # noqa: E402
from lmc.alignment import MemoryAlignment  # noqa: E402
from lmc.checkpoint import save_checkpoint, write_manifest  # noqa: E402
from lmc.train.checkpoints import RunCheckpoints, checkpoint_name  # noqa: E402
from pipeline.storage import Location  # noqa: E402


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper-mmnist")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    cfg = lmc.preset(a.preset)
    model = lmc.LMCModel(cfg)
    align = MemoryAlignment(model)
    for param in model.parameters():              # Adam's moments exist after a step
        param.grad = torch.zeros_like(param)
    align.optimizer.step()
    state = {"alignment": align.state_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "local")
        save_checkpoint(local, model, cfg, state)
        size = sum(os.path.getsize(os.path.join(local, f)) for f in os.listdir(local))

        def save_plain():
            d = tempfile.mkdtemp(dir=tmp)
            torch.save(model.state_dict(), os.path.join(d, "model.pt"))
            torch.save(state, os.path.join(d, "train_state.pt"))

        run = Location.of(os.path.join(tmp, "run"))
        store = RunCheckpoints(run)
        counter = iter(range(10 ** 6))

        def commit():
            store.commit(local, checkpoint_name(next(counter)))

        t_save = best(save_plain, a.repeats)
        t_manifest = best(lambda: write_manifest(local), a.repeats)
        t_commit = best(commit, a.repeats)
        t_verify = best(lambda: RunCheckpoints(run).newest_verified(), a.repeats)
    mb = size / 1e6
    print(f"{a.preset}: checkpoint of {mb:.1f} MB ({sum(p.numel() for p in model.parameters()):,} "
          f"parameters), best of {a.repeats}, local disk")
    print(f"  save (torch.save, no manifest)   {t_save:7.3f} s")
    print(f"  manifest (sha256 of every file)  {t_manifest:7.3f} s  ({mb / t_manifest:.0f} MB/s; "
          f"+{100 * t_manifest / t_save:.0f}% of the save)")
    print(f"  commit to the run folder         {t_commit:7.3f} s")
    print(f"  verify at resume (newest_verified) {t_verify:5.3f} s  ({mb / t_verify:.0f} MB/s)")


if __name__ == "__main__":
    main()
