"""Run the README's tour as written: every ```python block of its tour section, in order.

From the repository root (the tour reads ``../shared/data/zheng_sorted_pbmc_2k.h5ad``)::

    python docs/check_tour.py                # the README tour as written, with each step's time
    python docs/check_tour.py --threads 1    # the setting the tour's timings were measured with
    python docs/check_tour.py --max-epochs 5 # a quick smoke run (not the tour's timings)

Prints the seconds of each block and of the whole run, and exits 1 at the first block that
fails (with its traceback and the README line it starts on). Not part of pytest: it needs
the real data in ``../shared/data`` and several minutes.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


TOUR_HEADING = "## A tour"


def blocks(text: str, section: str = TOUR_HEADING) -> list[tuple[int, str, str]]:
    """(first line number, heading above it, code) of each ```python block in the level-2
    section of ``text`` whose heading starts with ``section`` (the other README examples use
    names such as ``query`` that the tour never defines)."""
    start = text.find("\n" + section)
    if start < 0:
        raise SystemExit(f"no section starting with {section!r}")
    end = text.find("\n## ", start + 1)
    end = len(text) if end < 0 else end
    found = []
    for match in BLOCK.finditer(text, start, end):
        line = text.count("\n", 0, match.start(1)) + 1
        headings = re.findall(r"^#+ (.+)$", text[: match.start()], re.MULTILINE)
        found.append((line, headings[-1] if headings else "", match.group(1)))
    return found


def _load() -> float:
    """The 1-minute load average (NaN where the system has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _machine(threads: int | None) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", info.read_text(), re.MULTILINE)
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} thread(s){'' if threads else ' (default)'}, {gpu}, "
        f"load average {_load():.1f} at the start"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tour", type=Path, default=ROOT / "README.md")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N)")
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="cap every train() call (a smoke run; the timings are then not the tour's)",
    )
    args = parser.parse_args(argv)

    os.chdir(ROOT)  # the tour's paths are relative to the repository root
    data = ROOT.parent / "shared" / "data"
    if not data.is_dir():
        print(f"{data} does not exist: the tour reads a real count file from it.", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")  # figures are drawn, not shown
    import matplotlib.pyplot as plt
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.max_epochs is not None:
        import gmmvae

        train = gmmvae.GMMVAE.train

        @functools.wraps(train)
        def capped(self, max_epochs=None, **kwargs):
            return train(self, min(max_epochs or args.max_epochs, args.max_epochs), **kwargs)

        gmmvae.GMMVAE.train = capped

    code = blocks(args.tour.read_text())
    print(f"{args.tour.relative_to(ROOT)}: {len(code)} python blocks on {_machine(args.threads)}")
    namespace: dict = {"__name__": "__tour__"}
    timings = []
    start, start_cpu = time.perf_counter(), time.process_time()
    for i, (line, heading, source) in enumerate(code, 1):
        print(f"\n[{i}/{len(code)}] line {line}: {heading}", flush=True)
        began, cpu = time.perf_counter(), time.process_time()
        try:
            exec(compile(source, f"{args.tour.name}:{line}", "exec"), namespace)
        except Exception:
            traceback.print_exc()
            print(f"\nblock {i} (README line {line}, {heading!r}) failed.", file=sys.stderr)
            return 1
        finally:
            plt.close("all")
        wall, used = time.perf_counter() - began, time.process_time() - cpu
        timings.append((i, line, heading, wall, used))
        print(f"[{i}/{len(code)}] {wall:.1f} s ({used:.1f} s of CPU)", flush=True)
    total, total_cpu = time.perf_counter() - start, time.process_time() - start_cpu

    # CPU seconds (this process, all its threads) next to the wall clock: on a shared machine
    # the wall clock also counts the time other processes had the cores.
    print("\n| block | README line | step | seconds | CPU seconds |\n|---|---|---|---|---|")
    for i, line, heading, wall, used in timings:
        print(f"| {i} | {line} | {heading} | {wall:.1f} | {used:.1f} |")
    print(f"| | | total | {total:.1f} | {total_cpu:.1f} |")
    print(f"load average at the end: {_load():.1f}")
    suffix = f" (train capped at {args.max_epochs} epochs)" if args.max_epochs else ""
    print(f"\nThe tour ran as written in {total:.0f} s{suffix}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
