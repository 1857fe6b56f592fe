"""Training throughput on Ray Train: samples/s with 1 and 2 CPU workers (DDP, gloo) on the tiny
preset, the scaling ratio, and the fraction of step time spent waiting for data.

    python benchmarks/bench_train.py [--iterations 40] [--threads 1]

Uses the synthetic KTH-like demo shards (made once in the cache, as `jobs/train_kth.py` does).
Throughput is measured by the driver itself over the second half of each run (the window
between its two reports), so Ray and worker start-up and the first iterations are excluded.
`batch_size` is the global batch, so both runs do the same optimisation per iteration.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                os.environ.get("PYTHONPATH")) if p)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--batch-size", type=int, default=8, help="global batch")
    args = p.parse_args()

    import ray

    import lmc
    from lmc.train import RunSettings, train
    from lmc.train.cli import demo_data

    cfg = lmc.preset("tiny", iterations=args.iterations, batch_size=args.batch_size)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    data = demo_data("kth", cfg)
    results = {}
    with tempfile.TemporaryDirectory() as storage:
        for workers in (1, 2):
            s = RunSettings(data=data, storage=storage, name=f"bench-{workers}",
                            num_workers=workers, threads_per_worker=args.threads,
                            checkpoint_every=args.iterations // 2, eval_windows=1, test_windows=1,
                            artifacts=False, max_failures=0)
            m = train(cfg, s, verbose=False)["last_report"]
            results[workers] = m
            print(f"{workers} worker(s) x {args.threads} thread(s): "
                  f"{m['samples_per_s']:.2f} samples/s, data wait {m['data_wait_fraction']:.1%} "
                  f"of step time")
    ray.shutdown()
    ratio = results[2]["samples_per_s"] / results[1]["samples_per_s"]
    print(f"scaling 1 -> 2 workers: {ratio:.2f}x (ideal 2.00x on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
