"""Table 4 at small scale from the finished runs' own final evaluations (no re-training, no
re-scoring): each run's metrics.json holds its test scores under the run's protocol, 10-10 on
all 1,000 test windows here, which for a 10-frame horizon is the ablation's "last 10 frames"
protocol exactly (`lmc.protocols.last_n_protocol(10, 10)` scores frames 1-10).

    python results/ablation/make_table.py --runs <storage> --name table4 --seeds 1 2 3 \
        --output results/ablation/table4.json

`jobs/ablation.py ... --seeds 1 2 3 --output ...` makes the same rows (it resumes finished runs,
scores them again and adds the batch-1 inference time); this script skips runs not finished.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from lmc.config import LMCConfig  # noqa: E402
from lmc.experiments.ablation import DESIGNS, format_table, table_row, write_table  # noqa: E402


def rows(runs: str, name: str, seeds) -> list[dict]:
    out = []
    for seed in seeds:
        for design in DESIGNS:
            run = os.path.join(runs, f"{name}-{design}-s{seed}")
            path = os.path.join(run, "metrics.json")
            if not os.path.exists(path):
                print(f"skipped {run}: not finished", file=sys.stderr)
                continue
            m = json.load(open(path))
            lpips = ("available" if "lpips" in m["test"]["mean"]
                     else "unavailable (no AlexNet weights on this machine)")
            out.append({**table_row(LMCConfig.from_dict(m["config"]), m["run"], m["protocol"],
                                    m["test"], m["baselines"], lpips),
                        "iterations": m["iterations"],
                        "inference_protocol": "not timed (results/ablation/make_table.py)"})
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", required=True, help="the ablation's --storage")
    p.add_argument("--name", default="table4")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--output", required=True)
    a = p.parse_args()
    table = rows(a.runs, a.name, a.seeds)
    print(format_table(table))
    write_table(table, a.output)
