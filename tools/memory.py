"""Peak resident memory of `run_transformer.py --loss smooth --epochs 1` on the benchmark with 1x, 4x, 10x (or the
given multiples of) its training split, appended to results/speed/memory.txt (docs/speed.md). Scales run in rising
order: the kernel reports the largest child's peak so far."""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: runs from any folder

import synthetic  # noqa: E402
from fileio import append_text, provenance  # noqa: E402


def peak_gb(scale: float, scratch: Path) -> tuple[list[str], int, float]:
    """(command, training images, peak RSS in GB) of one 1-epoch run on the scaled benchmark."""
    base = synthetic.Sizes()
    sizes = synthetic.Sizes(**{**asdict(base), "train0": round(base.train0 * scale),
                               "train1": round(base.train1 * scale)})
    data_dir = synthetic.generate_benchmark(scratch / f"data-x{scale:g}", sizes=sizes)
    command = [sys.executable, "run_transformer.py", "--loss", "smooth", "--epochs", "1", "--data-dir",
               str(data_dir), "--out-dir", str(scratch / f"runs-x{scale:g}"),
               "--predictions", str(scratch / f"predictions-x{scale:g}.txt")]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux; the largest child so far
    return command, sizes.train0 + sizes.train1, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scales", type=float, nargs="*", default=[1, 4, 10], help="training-split multipliers")
    parser.add_argument("--out", default=str(ROOT / "results" / "speed" / "memory.txt"))
    args = parser.parse_args()
    record = provenance()
    commit = record["commit"] + (" (uncommitted changes)" if record["dirty"] else "")
    with tempfile.TemporaryDirectory() as scratch:
        for scale in sorted(args.scales):
            command, images, gb = peak_gb(scale, Path(scratch))
            line = f"{' '.join(command[1:])}  commit {commit}  train images {images}  peak {gb:.2f} GB"
            print(line)
            append_text(args.out, line + "\n")


if __name__ == "__main__":
    main()
