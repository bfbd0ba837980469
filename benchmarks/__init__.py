"""Benchmarks of gmmvae against its peers, as DESIGN.md §2 defines them.

One runner, ``python -m benchmarks PROTOCOL [options]`` (see ``__main__.py``): datasets are
prepared once (:mod:`benchmarks.datasets`), every method is one function
(:mod:`benchmarks.methods`), each protocol builds its grid of units
(:mod:`benchmarks.protocols`), rows are appended with their provenance
(:mod:`benchmarks.store`) and BENCHMARKS.md is rendered from the current rows
(:mod:`benchmarks.report`).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"
QUICK_RESULTS = RESULTS / "quick"
FIGURES = ROOT / "figures"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
# The shared data folder beside the repository (CI has the same layout).
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
PROTOCOLS = (
    "clustering",
    "semi",
    "query",
    "novelty",
    "perturbation",
    "synthetic",
    "integration",
    "speed",
)
QUICK_EPOCHS = 3  # max_epochs of every trained method under --quick
