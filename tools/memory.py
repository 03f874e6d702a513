"""Peak resident memory of `run_transformer.py --loss smooth --epochs 1` on the benchmark with 1x, 4x, 10x (or the
given multiples of) its training split, appended to results/speed/memory.txt (docs/speed.md). Scales run in rising
order: the kernel reports the largest child's peak so far."""

import argparse
import resource
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: runs from any folder

import synthetic  # noqa: E402
from fileio import append_text, provenance  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.memory", description=__doc__)
    parser.add_argument("scales", type=float, nargs="*", default=[1, 4, 10], help="training-split multipliers")
    parser.add_argument("--out", default=str(ROOT / "results" / "speed" / "memory.txt"))
    args = parser.parse_args()
    base, record = synthetic.Sizes(), provenance()
    commit = record["commit"] + (" (uncommitted changes)" if record["dirty"] else "")
    with tempfile.TemporaryDirectory() as scratch:
        for scale in sorted(args.scales):
            sizes = replace(base, train0=round(base.train0 * scale), train1=round(base.train1 * scale))
            folder = Path(scratch) / f"x{scale:g}"
            data_dir = synthetic.generate_benchmark(folder / "data", sizes=sizes)
            command = ["run_transformer.py", "--loss", "smooth", "--epochs", "1", "--data-dir", str(data_dir),
                       "--out-dir", str(folder / "runs"), "--predictions", str(folder / "predictions.txt")]
            subprocess.run([sys.executable, *command], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux; the largest child yet
            line = f"{' '.join(command)}  commit {commit}  train images {sizes.train0 + sizes.train1}  peak {gb:.2f} GB"
            print(line)
            append_text(args.out, line + "\n")


if __name__ == "__main__":
    main()
