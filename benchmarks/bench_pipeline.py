"""Data pipeline throughput on CPU (docs/design.md §7): decode, shards, loader.

    python benchmarks/bench_pipeline.py                 # 36 KTH-like videos x 500 frames, 2 workers

Prints, with the same output size (128x128 luma, KTH's setting):
  1. decord's own single-file decode rate (frames/s, one thread, resize at decode), and the
     same plus the BT.601 luma every grayscale frame needs (`pipeline.decode.luma`),
  2. the pipeline's end-to-end rate into shards on `--workers` Ray workers (frames/s decoded,
     from the first task to the manifest), and its ratio to (1) x workers (target >= 0.6):
     once on a fresh Ray session (workers and decoder processes start inside the run, as in a
     one-off `prepare_kth`), once more into a new output (workers up: the rate a long
     preparation runs at after its first seconds),
  3. the training loader's rate (samples/s of float windows) from those shards.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)


def make_videos(folder: str, count: int, frames: int) -> list[str]:
    """One rendered video per action, copied under further KTH names (decode cost is the same)."""
    from pipeline.sources.kth import ACTIONS, kth_name
    from pipeline.synthetic import encode_avi, render_frames

    os.makedirs(folder, exist_ok=True)
    base = []
    for i, action in enumerate(ACTIONS):
        path = os.path.join(folder, f"{kth_name(1 + i, action, 1)}_uncomp.avi")
        encode_avi(render_frames(action, 1 + i, 1, frames), path)
        base.append(path)
    paths = list(base)
    for k in range(len(base), count):
        person, action, scenario = 1 + k % 25, ACTIONS[k % 6], 1 + (k // 25) % 4
        path = os.path.join(folder, f"{kth_name(person, action, scenario)}_uncomp.avi")
        if not os.path.exists(path):
            shutil.copy(base[k % 6], path)
            paths.append(path)
    return paths


def decord_rate(paths: list[str], size: int, seconds: float = 5.0, gray: bool = False) -> float:
    """decord alone, one thread, resizing at decode, for `seconds`; with `gray`, plus the
    BT.601 luma the pipeline computes for every grayscale frame.

    Runs as a Ray task: Ray workers run at a lower CPU priority (niceness 15) than the driver,
    so measuring in the driver would compare the pipeline against an unfairly favoured decoder
    whenever anything else runs on the machine."""
    import decord

    from pipeline.decode import luma

    frames, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for path in paths:
            vr = decord.VideoReader(path, width=size, height=size, num_threads=1)
            rgb = vr.get_batch(list(range(len(vr)))).asnumpy()
            frames += len(luma(rgb) if gray else rgb)
    return frames / (time.perf_counter() - t0)


def loader_rate(shards: str, batch_size: int, batches: int) -> float:
    from pipeline import iter_train_batches, load_split

    ds = load_split(shards, "train")
    it = iter_train_batches(ds, batch_size=batch_size, window_len=20, seed=0, epochs=None)
    next(it)  # pipeline start-up is not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=36)
    p.add_argument("--frames", type=int, default=500)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    import ray

    from pipeline import KTHSource, ShardConfig, prepare

    work = tempfile.mkdtemp(prefix="bench-pipeline-")
    try:
        videos = make_videos(os.path.join(work, "kth"), args.videos, args.frames)
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        cfg = ShardConfig(short_len=10, out_len=10, img_size=args.img_size, train_stride=20)
        source = KTHSource(os.path.join(work, "kth"))
        cold = prepare(source, os.path.join(work, "shards"), cfg, verbose=False)
        warm = prepare(source, os.path.join(work, "shards-again"), cfg, verbose=False)
        timed_decode = ray.remote(num_cpus=1)(decord_rate)
        single = ray.get(timed_decode.remote(videos[:6], args.img_size))
        single_gray = ray.get(timed_decode.remote(videos[:6], args.img_size, gray=True))
        samples = loader_rate(os.path.join(work, "shards"), args.batch_size, 40)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rates = {name: run["frames_decoded"] / run["seconds"]
             for name, run in (("fresh Ray session", cold), ("workers already up", warm))}
    print(f"\nbench_pipeline: {len(videos)} videos x {args.frames} frames -> "
          f"{args.img_size}x{args.img_size} luma, {args.workers} workers, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (other work on the machine skews the ratios)")
    print(f"  decord single file, 1 thread      {single:10,.0f} frames/s (5 s, in a Ray worker)")
    print(f"  decord + BT.601 luma              {single_gray:10,.0f} frames/s "
          f"(the decoding work per grayscale frame: {single_gray / single:.2f} of decord's rate)")
    for (name, rate), run in zip(rates.items(), (cold, warm)):
        print(f"  pipeline -> shards, {name:<18} {rate:7,.0f} frames/s "
              f"({run['frames_decoded']:,} frames in {run['seconds']:.1f} s), ratio to decord x "
              f"{args.workers}: {rate / (single * args.workers):.2f} (target >= 0.60), to decord "
              f"+ luma x {args.workers}: {rate / (single_gray * args.workers):.2f}")
    print(f"  loader (float windows, 20 frames) {samples:10,.0f} samples/s "
          f"= {samples * 20:,.0f} frames/s, batch {args.batch_size}")
    print(f"  ratio loader frames / pipeline    {samples * 20 / rates['workers already up']:10.2f}"
          "   (workers already up)")


if __name__ == "__main__":
    main()
