"""``python -m benchmarks PROTOCOL [options]``: run a protocol's grid, then render its section.

PROTOCOL is one of clustering, semi, query, novelty, perturbation, synthetic, integration,
speed, de, choose_k (run, append rows, render) or summary (render the one-screen summary
only); ``speed`` takes a grid, ``speed throughput|scaling|loader`` (default: all three).
``--quick`` runs a tiny smoke grid (1 seed, a stratified subsample of a few hundred cells or
a small simulation, 3 epochs; a protocol's ``QUICK_DATASETS`` where it has them) into
``results/quick/`` and renders it to ``results/quick/BENCHMARKS.md``, never to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from benchmarks import DEFAULT_DATA_DIR, PROTOCOLS, QUICK_EPOCHS
from benchmarks.store import PROTOCOL_FILES

# Protocols added after rows were stored (de, choose_k): registered in store.PROTOCOL_FILES
# and report.py, not in benchmarks.PROTOCOLS (see report.LATER_PROTOCOLS).
LATER_PROTOCOLS = tuple(p for p in PROTOCOL_FILES if p not in PROTOCOLS)
# Protocols whose grid_units load real datasets themselves (beside their simulated ones).
DATA_DIR_PROTOCOLS = ("de", "choose_k")

QUICK_SEEDS = [0]
QUICK_FRACTIONS = [0.1]
QUICK_HELD_OUT = ["B"]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("protocol", choices=[*PROTOCOLS, *LATER_PROTOCOLS, "summary"])
    parser.add_argument("grid", nargs="?", help="speed: throughput, scaling or loader")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2; speed 0 (--quick: 0)")
    parser.add_argument("--datasets", nargs="+", help="default: the protocol's datasets")
    parser.add_argument("--methods", nargs="+", help="default: the protocol's methods")
    parser.add_argument("--fractions", type=float, nargs="+", help="semi: label fractions")
    parser.add_argument("--held-out", nargs="+", help="novelty: populations held out in turn")
    parser.add_argument("--types", nargs="+", help="perturbation: cell types held out in turn")
    parser.add_argument(
        "--cap", type=int, nargs="+", default=[], help="also run trained methods at this epoch cap"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny smoke run, rows in results/quick/"
    )
    parser.add_argument("--render-only", action="store_true", help="render from stored rows")
    parser.add_argument(
        "--current-only",
        dest="include_stale",
        action="store_false",
        help="tables without the stale rows (by default they are shown, marked [stale])",
    )
    # what --current-only turns off is the default now; the old flag is still accepted
    parser.add_argument(
        "--include-stale", dest="_old_flag", action="store_true", help=argparse.SUPPRESS
    )
    parser.add_argument("--allow-dirty", action="store_true", help="write rows from a dirty tree")
    parser.add_argument("--retry-errors", action="store_true", help="rerun units that failed")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--accelerator", default="cpu", help="speed: Lightning accelerator")
    parser.add_argument("--show-warnings", action="store_true")
    return parser.parse_args(argv)


def quiet() -> None:
    """No warnings and no INFO lines from the libraries (``--show-warnings`` keeps them)."""
    import logging

    warnings.filterwarnings("ignore")
    names = ("scvi", "lightning", "lightning.pytorch", "lightning.fabric", "celltypist")
    for name in (*names, "scib_metrics", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for package in ("scvi", "scib_metrics"):  # their settings reset their loggers' levels
        if package in sys.modules:
            sys.modules[package].settings.verbosity = logging.ERROR
    # CellTypist sets the root logger to INFO on import; scib-metrics logs to the root.
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))


def warm_up() -> None:
    """Import every method's package, train a tiny gmmvae and cluster a tiny PCA once before
    the first unit, so that no unit's wall time includes imports, numba compilation or
    first-call set-up (about 5 s each here)."""
    import celltypist  # noqa: F401
    import scvi  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    import gmmvae
    from benchmarks import methods

    tiny = gmmvae.datasets.simulate(n_cells=60, n_genes=20, n_types=2)
    gmmvae.GMMVAE.setup_anndata(tiny)
    gmmvae.GMMVAE(tiny, n_components=2).train(1, progress_bar=False)
    pcs, _ = methods.pca(tiny.X.toarray() if hasattr(tiny.X, "toarray") else tiny.X, 0)
    methods.leiden(pcs, 2, 0)


def limit_threads(n: int) -> None:
    """Thread limits before numpy/torch load (the benchmark machines are shared)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)
    if n == 1 and "XLA_FLAGS" not in os.environ:  # jax (scib-metrics, scGen) on one thread
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = flags


def run(args: argparse.Namespace) -> None:
    """Build and run the grid of one protocol."""
    from benchmarks import datasets
    from benchmarks.protocols import Settings, module, run_grid

    proto = module(args.protocol)
    default_seeds = list(getattr(proto, "SEEDS", [0, 1, 2]))  # speed: one seed
    settings = Settings(
        seeds=args.seeds or (QUICK_SEEDS if args.quick else default_seeds),
        datasets=args.datasets
        or list(getattr(proto, "QUICK_DATASETS", proto.DATASETS) if args.quick else proto.DATASETS),
        methods=args.methods or list(proto.METHODS),
        epochs=[QUICK_EPOCHS if args.quick else None, *args.cap],
        threads=args.threads,
        quick=args.quick,
        retry_errors=args.retry_errors,
    )
    for what, given, known in (
        ("methods", settings.methods, (*proto.METHODS, *getattr(proto, "EXTRA_METHODS", ()))),
        ("datasets", settings.datasets, proto.DATASETS),
    ):
        if set(given) - set(known):
            sys.exit(
                f"unknown {what} {sorted(set(given) - set(known))} for {args.protocol}; "
                f"known: {list(known)}"
            )
    extra = {}
    if args.protocol == "semi":
        extra["fractions"] = args.fractions or (QUICK_FRACTIONS if args.quick else proto.FRACTIONS)
    if args.protocol == "novelty":
        extra["held_out"] = args.held_out or (QUICK_HELD_OUT if args.quick else proto.HELD_OUT)
    if args.protocol == "perturbation":
        extra["types"] = args.types or list(proto.QUICK_TYPES if args.quick else proto.TYPES)
    if args.protocol in DATA_DIR_PROTOCOLS:
        extra["data_dir"] = args.data_dir
    if args.protocol == "speed":
        if args.grid not in (None, *proto.GRIDS):
            sys.exit(f"unknown speed grid {args.grid!r}; known: {list(proto.GRIDS)}")
        extra = {"grids": [args.grid] if args.grid else list(proto.GRIDS)}
        extra["accelerator"] = args.accelerator
    elif args.grid is not None:
        sys.exit(f"{args.protocol} takes no grid (got {args.grid!r}); only speed does")

    def units():
        if hasattr(proto, "grid_units"):  # simulated data made by the protocol itself
            yield from proto.grid_units(settings, **extra)
            return
        for name in settings.datasets:
            ds = datasets.load(name, args.data_dir, args.quick)
            for seed in settings.seeds:
                yield from proto.units(ds, seed, settings, **extra)

    warm_up()
    if hasattr(proto, "warm_up"):  # the protocol's own packages (integration: harmonypy)
        proto.warm_up()
    if not args.show_warnings:
        quiet()  # again: importing scvi-tools sets its log level
    written = run_grid(args.protocol, units(), settings)
    print(f"{written} row(s) written")


def check_tree(args: argparse.Namespace) -> None:
    """Refuse non-quick rows from a dirty tree unless --allow-dirty; fix the fingerprints
    now, before any code is imported lazily."""
    from benchmarks import store
    from benchmarks.store import fingerprint

    if args.protocol != "summary":
        for scope in ("gmmvae", "peer"):
            fingerprint(args.protocol, scope)
    state = store.code_state()
    if args.quick or args.render_only or args.protocol == "summary":
        return
    if state["dirty"] and not args.allow_dirty:
        where = "src/ or benchmarks/ has uncommitted changes"
        if "gmmvae_path" in state:
            where = f"gmmvae is imported from {state['gmmvae_path']}, not this checkout"
        sys.exit(
            f"Refusing to write benchmark rows from a dirty tree ({where}; HEAD is "
            f"{state['commit']}). Commit first, or pass --allow-dirty: the rows then say "
            "dirty=true and the tables mark them."
        )


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    limit_threads(args.threads)
    if not args.show_warnings:
        quiet()
    import torch

    torch.set_num_threads(args.threads)
    from benchmarks import report

    check_tree(args)
    if args.protocol != "summary" and not args.render_only:
        try:
            run(args)
        except FileNotFoundError as err:  # the data folder: say where it looked
            sys.exit(str(err))
    protocols = [] if args.protocol == "summary" else [args.protocol]
    path = report.render(protocols, quick=args.quick, include_stale=args.include_stale)
    if args.quick:
        for protocol in protocols:
            print(report.section(protocol, quick=True, include_stale=args.include_stale))
    print(f"rendered {path}")


if __name__ == "__main__":
    main()
