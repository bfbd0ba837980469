"""The ``gmmvae`` command: train, choose-k, annotate, embed, de, normalize, map-query,
generate, perturb, demo."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gmmvae.options import (
    DEFAULT_GENERATION_LATENT,
    DEFAULT_LIKELIHOOD,
    DEFAULT_PERTURBATION_METHOD,
    DEFAULT_PLACEMENT,
    DEFAULT_SHIFT_WEIGHTING,
    GENERATION_LATENTS,
    LIKELIHOODS,
    PERTURBATION_METHODS,
    PLACEMENTS,
    SHIFT_WEIGHTINGS,
    VARIANTS,
)

app = typer.Typer(
    help="Gaussian-mixture VAE for single-cell data: cluster, annotate and embed AnnData files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of errors.")
    ] = False,
) -> None:
    """Exit codes: 0 success, 1 bad input (message on stderr), 2 bad usage."""
    _state["debug"] = debug


def _choices(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    """A typer choice type with the option values defined once in :mod:`gmmvae.options`."""
    return StrEnum(name, {v: v for v in values})


LikelihoodChoice = _choices("LikelihoodChoice", LIKELIHOODS)
VariantChoice = _choices("VariantChoice", VARIANTS)
PlacementChoice = _choices("PlacementChoice", PLACEMENTS)
PerturbMethod = _choices("PerturbMethod", PERTURBATION_METHODS)
LatentChoice = _choices("LatentChoice", GENERATION_LATENTS)
WeightingChoice = _choices("WeightingChoice", SHIFT_WEIGHTINGS)
DEFAULT_LIKELIHOOD_CHOICE = LikelihoodChoice(DEFAULT_LIKELIHOOD)
DEFAULT_PLACEMENT_CHOICE = PlacementChoice(DEFAULT_PLACEMENT)
DEFAULT_PERTURB_METHOD = PerturbMethod(DEFAULT_PERTURBATION_METHOD)
DEFAULT_LATENT_CHOICE = LatentChoice(DEFAULT_GENERATION_LATENT)
DEFAULT_WEIGHTING_CHOICE = WeightingChoice(DEFAULT_SHIFT_WEIGHTING)


def _quiet_lightning() -> None:
    # Handlers and levels belong to the application (here), not the library.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _read(path: Path, *, backed: bool = False):
    import anndata as ad

    from gmmvae.errors import GMMVAEInputError

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; check the path.")
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except (OSError, KeyError) as err:
        raise GMMVAEInputError(f"{path} could not be read as an .h5ad file ({err}).") from err


def _fail(err: Exception) -> None:
    if _state["debug"]:
        raise err
    errors.print(f"[bold red]Error:[/] {err}")
    raise typer.Exit(code=1)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Report bad input as one line on stderr with exit code 1 (traceback with --debug)."""
    from gmmvae.errors import GMMVAEInputError

    try:
        yield
    except (GMMVAEInputError, FileNotFoundError, FileExistsError) as err:
        _fail(err)


def _number(text: str, word: str = "empirical") -> float:
    """``--library-size``: a number, or ``word`` (handled by the caller)."""
    from gmmvae.errors import GMMVAEInputError

    try:
        return float(text)
    except ValueError:
        msg = f"--library-size must be {word!r} or a number, got {text!r}."
        raise GMMVAEInputError(msg) from None


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it.")


Force = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
Backed = Annotated[
    bool,
    typer.Option(
        "--backed",
        help="Read the matrix from disk in blocks instead of loading it (data larger than "
        "memory); the file is opened read-only and never modified.",
    ),
]


Data = Annotated[Path, typer.Argument(help="Input AnnData file (.h5ad).")]
ModelDir = Annotated[Path, typer.Argument(help="Model directory written by `gmmvae train`.")]
Seed = Annotated[int, typer.Option(help="Random seed (initialisation, split, shuffling).")]
BatchKey = Annotated[str | None, typer.Option(help="obs column with the technical batch.")]
Layer = Annotated[str | None, typer.Option(help="Layer with the counts (default: X).")]
MaxEpochs = Annotated[
    int | None, typer.Option(help="Epochs; default scales with the number of cells.")
]
BatchSize = Annotated[int, typer.Option(help="Minibatch size.")]
Accelerator = Annotated[str, typer.Option(help="Lightning accelerator: auto, cpu, gpu.")]
Devices = Annotated[
    str, typer.Option(help="Lightning devices: auto, a count (e.g. 4) or a list (0,1).")
]
KeyAdded = Annotated[str, typer.Option(help="Prefix of the obs/obsm keys written.")]
NoveltyQuantile = Annotated[
    float,
    typer.Option(
        help="Flag cells whose novelty score (distance to the nearest training cells in the "
        "latent) exceeds this quantile of the validation cells' scores; 0.95 flags about "
        "5 percent of new cells of known types."
    ),
]
ConfidenceThreshold = Annotated[
    float | None,
    typer.Option(help="Also flag cells whose top probability is below this (off by default)."),
]


@app.command()
def train(
    data: Data,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to save the model to.")],
    labels_key: Annotated[
        str | None, typer.Option(help="obs column with cell-type labels (semi-supervised).")
    ] = None,
    unlabeled_category: Annotated[
        str, typer.Option(help="Value in the labels column that marks unlabelled cells.")
    ] = "Unknown",
    condition_key: Annotated[
        str | None, typer.Option(help="obs column with the condition (treatment); cGMMVAE.")
    ] = None,
    batch_key: BatchKey = None,
    layer: Layer = None,
    n_components: Annotated[
        int | None,
        typer.Option(
            help="Mixture components; default: labels + free components. Required without labels."
        ),
    ] = None,
    n_latent: Annotated[int, typer.Option(help="Latent dimension.")] = 16,
    likelihood: Annotated[
        LikelihoodChoice,
        typer.Option(help="nb/zinb/poisson for raw counts, gaussian for log data."),
    ] = DEFAULT_LIKELIHOOD_CHOICE,
    variant: Annotated[
        VariantChoice | None,
        typer.Option(help="Model variant (default: the package default, see README)."),
    ] = None,
    max_epochs: MaxEpochs = None,
    batch_size: BatchSize = 256,
    mixture_placement: Annotated[
        PlacementChoice,
        typer.Option(
            help="How the pre-trained latent is split into the starting components: leiden "
            "(kNN graph, resolution giving K clusters) or kmeans."
        ),
    ] = DEFAULT_PLACEMENT_CHOICE,
    accelerator: Accelerator = "auto",
    devices: Devices = "auto",
    strategy: Annotated[
        str, typer.Option(help="Lightning strategy: auto, or ddp for data-parallel training.")
    ] = "auto",
    num_nodes: Annotated[int, typer.Option(help="Machines for multi-node DDP.")] = 1,
    backed: Backed = False,
    seed: Seed = 0,
    force: Force = False,
) -> None:
    """Train a GMMVAE on DATA and save it to --out."""
    _quiet_lightning()
    from gmmvae.model import GMMVAE

    with _user_errors():
        _check_output(out, force)
        adata = _read(data, backed=backed)
        GMMVAE.setup_anndata(
            adata,
            layer=layer,
            labels_key=labels_key,
            condition_key=condition_key,
            batch_key=batch_key,
            unlabeled_category=unlabeled_category,
        )
        options = {"variant": variant.value} if variant else {}
        model = GMMVAE(
            adata,
            n_components=n_components,
            n_latent=n_latent,
            likelihood=likelihood.value,
            seed=seed,
            **options,
        )
        model.train(
            max_epochs,
            batch_size=batch_size,
            mixture_placement=mixture_placement.value,
            seed=seed,
            accelerator=accelerator,
            devices=_devices(devices),
            strategy=strategy,
            num_nodes=num_nodes,
        )
        if _is_main_process():
            model.save(out, overwrite=force)
    console.print(f"Saved {model!r} to {out} ({len(model.history)} epochs).")


def _devices(value: str) -> int | str | list[int]:
    """'auto', '4' -> 4, '0,1' -> [0, 1], as Lightning takes them."""
    if value.isdigit():
        return int(value)
    if "," in value:
        return [int(v) for v in value.split(",") if v.strip()]
    return value


def _is_main_process() -> bool:
    """Rank 0 of a torchrun/SLURM launch (or a plain run) writes the outputs."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def _candidates(text: str) -> list[int]:
    """'4-12' -> 4..12, '4,6,8' -> [4, 6, 8]."""
    try:
        if "-" in text and "," not in text:
            low, high = (int(v) for v in text.split("-", 1))
            return list(range(low, high + 1))
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give a range like 4-12 or a list like 4,6,8."
        ) from None


@app.command("choose-k")
def choose_k(
    data: Data,
    candidates: Annotated[
        str, typer.Option(help="Numbers of components to try: a range (4-12) or a list (4,6,8).")
    ] = "2-12",
    batch_key: BatchKey = None,
    condition_key: Annotated[
        str | None, typer.Option(help="obs column with the condition (treatment).")
    ] = None,
    layer: Layer = None,
    held_out: Annotated[
        float, typer.Option(help="Share of cells scored by marginal likelihood, not trained on.")
    ] = 0.1,
    max_epochs: Annotated[
        int | None,
        typer.Option(help="Epoch cap of each candidate's training; default: the model's own."),
    ] = None,
    n_mc_samples: Annotated[int, typer.Option(help="Importance samples per held-out cell.")] = 50,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the table as CSV here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Save the held-out likelihood curve (PNG/PDF) here.")
    ] = None,
    seed: Seed = 0,
    force: Force = False,
) -> None:
    """Choose the number of components for DATA by held-out marginal likelihood.

    Trains one model per candidate K on the same cells and keeps the smallest K within one
    standard error of the best held-out log p(x). Each candidate is a full training.
    """
    _quiet_lightning()
    import gmmvae
    from gmmvae.model import GMMVAE

    with _user_errors():
        for path in (out, plot):
            if path is not None:
                _check_output(path, force)
        adata = _read(data)
        GMMVAE.setup_anndata(adata, layer=layer, batch_key=batch_key, condition_key=condition_key)
        train_kwargs = {} if max_epochs is None else {"max_epochs": max_epochs}
        table = gmmvae.select_n_components(
            adata,
            _candidates(candidates),
            held_out=held_out,
            seed=seed,
            n_mc_samples=n_mc_samples,
            train_kwargs=train_kwargs,
        )
        if out is not None:
            table.to_csv(out, index=False)
        if plot is not None:
            gmmvae.pl.n_components(table, save=str(plot))
    shown = Table("K", "held-out log p(x)", "gap to best (SE)", "components used", "chosen")
    for row in table.itertuples():
        gap = f"{row.gap_to_best:.3f} ({row.gap_se:.3f})"
        mark = "*" if row.selected else ""
        used = str(row.n_occupied)
        shown.add_row(str(row.n_components), f"{row.marginal_ll:.3f}", gap, used, mark)
    console.print(shown)
    console.print(f"Chosen K = {table.attrs['n_components']}.")


@app.command()
def annotate(
    model_dir: ModelDir,
    data: Data,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad with predictions.")],
    key_added: KeyAdded = "gmmvae",
    novelty_quantile: NoveltyQuantile = 0.95,
    confidence_threshold: ConfidenceThreshold = None,
    backed: Backed = False,
    force: Force = False,
) -> None:
    """Predict cell types (q(y|x)) for DATA; writes obs[KEY_label], KEY_confidence,
    KEY_novelty_score, KEY_novel."""
    _quiet_lightning()
    from gmmvae.model import GMMVAE

    with _user_errors():
        _check_output(out, force)
        adata = _read(data, backed=backed)
        model = GMMVAE.load(model_dir, adata=adata)
        _write_annotated(model, adata, out, key_added, novelty_quantile, confidence_threshold)
    counts = adata.obs[f"{key_added}_label"].value_counts()
    table = Table("label", "cells")
    for label, n in counts.items():
        table.add_row(str(label), str(n))
    console.print(table)
    console.print(f"Wrote {out}.")


def _write_annotated(
    model, adata, out: Path, key_added: str, quantile: float, confidence: float | None
) -> None:
    """Predictions (obs) and latent (obsm) of ``adata`` by ``model``, written to ``out``."""
    model.predict(
        adata, key_added=key_added, novelty_quantile=quantile, confidence_threshold=confidence
    )
    model.get_latent(adata, key_added=key_added)
    adata.write_h5ad(out)


@app.command()
def embed(
    model_dir: ModelDir,
    data: Data,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad with obsm[X_KEY].")],
    key_added: Annotated[str, typer.Option(help="Writes obsm['X_' + KEY].")] = "gmmvae",
    backed: Backed = False,
    force: Force = False,
) -> None:
    """Write the latent embedding of DATA into obsm (for sc.pp.neighbors(use_rep=...))."""
    _quiet_lightning()
    from gmmvae.model import GMMVAE

    with _user_errors():
        _check_output(out, force)
        adata = _read(data, backed=backed)
        model = GMMVAE.load(model_dir, adata=adata)
        latent = model.get_latent(adata, key_added=key_added)
        adata.write_h5ad(out)
    console.print(f"Wrote {out} with obsm['X_{key_added}'] of shape {latent.shape}.")


DEModeChoice = _choices("DEModeChoice", ("change", "vanilla"))
DEFAULT_DE_MODE = DEModeChoice("change")


@app.command()
def de(
    model_dir: ModelDir,
    data: Annotated[
        Path, typer.Argument(help="Cells to compare (.h5ad, counts, the model's genes).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Write the DE table (all comparisons) as CSV.")
    ],
    groupby: Annotated[
        str | None,
        typer.Option(
            help="obs column with the groups; default: the model's components (each cell in "
            "its most probable one)."
        ),
    ] = None,
    group1: Annotated[
        list[str] | None,
        typer.Option(help="Group to test; repeat for several; default: every group in turn."),
    ] = None,
    group2: Annotated[
        str | None, typer.Option(help="Group to compare with; default: all other cells (Rest).")
    ] = None,
    mode: Annotated[
        DEModeChoice,
        typer.Option(
            help="change: P(|log2 fold change| > --delta) with FDR-controlled calls; "
            "vanilla: P(expression in group1 > group2)."
        ),
    ] = DEFAULT_DE_MODE,
    delta: Annotated[
        float, typer.Option(help="Smallest |log2 fold change| that counts as a change.")
    ] = 0.25,
    fdr_target: Annotated[
        float, typer.Option(help="Posterior expected false discovery rate of the DE calls.")
    ] = 0.05,
    batch_correction: Annotated[
        bool,
        typer.Option(
            "--batch-correction",
            help="Decode under every batch of the model and average, so that groups are "
            "compared free of their batch composition.",
        ),
    ] = False,
    n_samples: Annotated[int, typer.Option(help="Posterior draws per group.")] = 5000,
    top: Annotated[int, typer.Option(help="Genes shown per comparison on screen.")] = 5,
    volcano: Annotated[
        Path | None, typer.Option(help="Also save a volcano plot (PNG/PDF) here.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the posterior draws.")] = 0,
    force: Force = False,
) -> None:
    """Differential expression between groups of DATA from the model's posterior.

    scvi-tools' layout: one row per gene and comparison with proba_de, bayes_factor,
    lfc_mean/median/std and credible interval, scales, expression fractions and the
    FDR-controlled call is_de_fdr_<FDR_TARGET>; sorted within each comparison.
    """
    _quiet_lightning()
    from gmmvae.model import GMMVAE

    with _user_errors():
        for path in (out, volcano):
            if path is not None:
                _check_output(path, force)
        adata = _read(data)
        model = GMMVAE.load(model_dir, adata=adata)
        frame = model.differential_expression(
            adata,
            groupby=groupby,
            group1=group1 or None,
            group2=group2,
            mode=mode.value,
            delta=delta,
            fdr_target=fdr_target,
            batch_correction=batch_correction,
            n_samples=n_samples,
            seed=seed,
        )
        frame.rename_axis("gene").to_csv(out)
        if volcano is not None:
            import gmmvae

            gmmvae.pl.de_volcano(frame, save=str(volcano))
    _show_de(frame, top, mode.value)
    console.print(f"Wrote {out} ({frame['comparison'].nunique()} comparisons).")


def _show_de(frame, top: int, mode: str) -> None:
    """The first ``top`` genes of each comparison (the frame is sorted within each)."""
    score = "proba_de" if mode == "change" else "proba_m1"
    calls = [c for c in frame.columns if c.startswith("is_de_fdr_")]
    shown = Table("comparison", "gene", score, "lfc_mean", "called DE" if calls else "")
    for comparison, rows in frame.groupby("comparison", sort=False):
        for gene, row in rows.head(top).iterrows():
            called = ("yes" if row[calls[0]] else "no") if calls else ""
            shown.add_row(
                str(comparison), str(gene), f"{row[score]:.3f}", f"{row.lfc_mean:.2f}", called
            )
    console.print(shown)


@app.command()
def normalize(
    model_dir: ModelDir,
    data: Data,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output .h5ad with the decoded expression layer.")
    ],
    layer_added: Annotated[str, typer.Option(help="Layer to write it into.")] = "gmmvae_normalized",
    transform_batch: Annotated[
        list[str] | None,
        typer.Option(
            help="Decode every cell under this batch (batch-corrected expression); repeat to "
            "average over several. Default: each cell's own batch."
        ),
    ] = None,
    transform_condition: Annotated[
        str | None,
        typer.Option(help="Decode every cell under this condition (counterfactual expression)."),
    ] = None,
    library_size: Annotated[
        str,
        typer.Option(
            help="Counts each cell sums to (a number, default 1e4 = CP10k) or 'latent' for each "
            "cell's observed total."
        ),
    ] = "1e4",
    n_samples: Annotated[int, typer.Option(help="Posterior draws averaged per cell.")] = 25,
    seed: Annotated[int, typer.Option(help="Random seed of the posterior draws.")] = 0,
    force: Force = False,
) -> None:
    """Write the model's denoised (optionally batch-corrected) expression of DATA to a layer.

    Averages decoded expression over posterior draws of z per cell; for the Gaussian
    likelihood the values are on the data's own (log) scale.
    """
    _quiet_lightning()
    from gmmvae.model import GMMVAE

    with _user_errors():
        _check_output(out, force)
        size = library_size if library_size == "latent" else _number(library_size, "latent")
        adata = _read(data)
        model = GMMVAE.load(model_dir, adata=adata)
        model.get_normalized_expression(
            adata,
            transform_batch=_one_or_list(transform_batch),
            transform_condition=transform_condition,
            library_size=size,
            n_samples=n_samples,
            seed=seed,
            key_added=layer_added,
        )
        adata.write_h5ad(out)
    console.print(f"Wrote {out} with layers['{layer_added}'].")


def _one_or_list(values: list[str] | None) -> str | list[str] | None:
    if not values:
        return None
    return values[0] if len(values) == 1 else list(values)


@app.command("map-query")
def map_query(
    model_dir: ModelDir,
    data: Annotated[
        Path,
        typer.Argument(
            help="Query cells (.h5ad, counts) with the reference's genes and its batch column, "
            "holding at least one batch the reference never saw."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to save the query model to.")],
    annotated: Annotated[
        Path | None,
        typer.Option(
            help="Also write DATA with predictions (obs[KEY_label], KEY_confidence, "
            "KEY_novelty_score, KEY_novel) and the latent (obsm['X_' + KEY]) to this .h5ad."
        ),
    ] = None,
    train_encoder: Annotated[
        bool,
        typer.Option(
            help="Also fit the encoder's trunk on the query cells, so that their latents and "
            "labels can move (--no-train-encoder: only the new batches' decoder weights learn "
            "and labels stay the reference's)."
        ),
    ] = True,
    key_added: KeyAdded = "gmmvae",
    novelty_quantile: NoveltyQuantile = 0.95,
    confidence_threshold: ConfidenceThreshold = None,
    max_epochs: MaxEpochs = None,
    batch_size: BatchSize = 256,
    accelerator: Accelerator = "auto",
    devices: Devices = "auto",
    seed: Seed = 0,
    force: Force = False,
) -> None:
    """Map DATA from new batches onto a trained reference (scArches-style) and save it.

    The new batches' decoder weights and the encoder's trunk train on DATA; the components,
    decoder and inference heads stay the reference's, so labels keep their meaning. The
    reference needs a --batch-key.
    """
    _quiet_lightning()
    from gmmvae.errors import GMMVAEInputError
    from gmmvae.model import GMMVAE

    with _user_errors():
        _check_output(out, force)
        if annotated is not None:
            _check_output(annotated, force)
        adata = _read(data)
        reference = GMMVAE.load(model_dir)
        query_model = GMMVAE.load_query_data(adata, reference, train_encoder=train_encoder)
        known = set(reference._categories("batches"))
        new = [b for b in query_model.registry["query_batches"] if b not in known]
        if not new:
            raise GMMVAEInputError(
                f"{data} holds only batches the reference was trained on, so there is "
                f"nothing to map; annotate it as it is: gmmvae annotate {model_dir} {data} "
                "--out OUT.h5ad"
            )
        query_model.train(
            max_epochs,
            batch_size=batch_size,
            seed=seed,
            accelerator=accelerator,
            devices=_devices(devices),
        )
        if _is_main_process():
            query_model.save(out, overwrite=force)
            if annotated is not None:
                _write_annotated(
                    query_model,
                    adata,
                    annotated,
                    key_added,
                    novelty_quantile,
                    confidence_threshold,
                )
    console.print(f"Saved the query model to {out} (new batches: {', '.join(map(str, new))}).")
    if annotated is not None:
        console.print(f"Wrote {annotated}.")


@app.command()
def generate(
    model_dir: ModelDir,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad of synthetic cells.")],
    n: Annotated[
        int, typer.Option("--n", help="Cells to generate (per --cell-type when given).")
    ] = 1000,
    cell_type: Annotated[
        list[str] | None,
        typer.Option(help="Cell type (component name) to generate; repeat for several."),
    ] = None,
    condition: Annotated[
        str | None, typer.Option(help="Condition seen in training (default: training mix).")
    ] = None,
    batch: Annotated[
        str | None, typer.Option(help="Batch seen in training (default: training mix).")
    ] = None,
    library_size: Annotated[
        str,
        typer.Option(help="'empirical' (drawn with z from the type's cells) or a number."),
    ] = "empirical",
    latent: Annotated[
        LatentChoice,
        typer.Option(
            help="Where z comes from: embedding (a Gaussian per type and condition fitted to "
            "the training cells' latent means and log library sizes; counts with per-gene "
            "dispersions refitted to those cells) or prior (the learned p(z|y) and "
            "dispersions; broader)."
        ),
    ] = DEFAULT_LATENT_CHOICE,
    seed: Seed = 0,
    force: Force = False,
) -> None:
    """Generate synthetic cells (counts) from a trained model."""
    _quiet_lightning()
    from gmmvae.model import GMMVAE

    with _user_errors():
        _check_output(out, force)
        model = GMMVAE.load(model_dir)
        size = library_size if library_size == "empirical" else _number(library_size)
        synthetic = model.generate(
            n,
            cell_type=cell_type or None,
            condition=condition,
            batch=batch,
            library_size=size,
            latent=latent.value,
            seed=seed,
        )
        synthetic.write_h5ad(out)
    console.print(f"Wrote {synthetic.n_obs} synthetic cells to {out}.")


@app.command()
def perturb(
    model_dir: ModelDir,
    control: Annotated[
        Path,
        typer.Argument(help="Cells under --source (.h5ad, counts), e.g. control cells of a type."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad of predicted cells.")],
    target: Annotated[
        str, typer.Option(help="Condition to predict the cells under (seen in training).")
    ] = "stimulated",
    source: Annotated[
        str, typer.Option(help="Condition the given cells are under (seen in training).")
    ] = "control",
    n_samples: Annotated[int, typer.Option(help="Cells of sampled counts per input cell.")] = 1,
    method: Annotated[
        PerturbMethod,
        typer.Option(
            help="transfer: the cell's reconstruction plus the model's response of the most "
            "similar types seen treated; latent_shift: move z by those types' treated-minus-"
            "control difference (both need --reference); decoder: only flip the decoder's "
            "condition (the seed model's approach)."
        ),
    ] = DEFAULT_PERTURB_METHOD,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="Cells under both conditions with cell types (.h5ad, e.g. the training data), "
            "from which transfer and latent_shift take the treatment response."
        ),
    ] = None,
    weighting: Annotated[
        WeightingChoice,
        typer.Option(
            help="How a type never seen under --target weighs the types it borrows the "
            "response from (transfer, latent_shift): similarity (a kernel of latent-centroid "
            "distance, the nearest weighs most) or uniform (every type the same, as scGen)."
        ),
    ] = DEFAULT_WEIGHTING_CHOICE,
    seed: Annotated[int, typer.Option(help="Random seed of the sampled counts.")] = 0,
    interval: Annotated[
        float,
        typer.Option(
            help="Level of the per-gene interval of the predicted mean expression, written to "
            "var['gmmvae_mean_lower'/'gmmvae_mean_upper']; 0 skips it."
        ),
    ] = 0.9,
    force: Force = False,
) -> None:
    """Predict how CONTROL cells respond to a treatment (treatment-effect prediction).

    Writes sampled counts in X and layers['counts'], the predicted mean expression
    (log1p CP10k) in layers['gmmvae_log_mean'], its mean over the cells with an interval in
    var, and obs['gmmvae_predicted'] = True.
    """
    _quiet_lightning()
    from gmmvae.errors import GMMVAEInputError
    from gmmvae.model import GMMVAE

    with _user_errors():
        _check_output(out, force)
        adata = _read(control)
        ref = _read(reference) if reference is not None else None
        if method.value != "decoder" and ref is None:
            raise GMMVAEInputError(
                f"--method {method.value} needs --reference REF.h5ad: cells under both "
                "conditions with cell types (e.g. the training data). Or pass --method decoder."
            )
        model = GMMVAE.load(model_dir, adata=adata)
        predicted = model.predict_perturbation(
            adata,
            source=source,
            target=target,
            n_samples=n_samples,
            seed=seed,
            method=method.value,
            reference=ref,
            weighting=weighting.value,
            interval=interval or None,
        )
        predicted.write_h5ad(out)
    console.print(
        f"Wrote {predicted.n_obs} predicted cells ({source} -> {target}, {method.value}) to {out}."
    )


@app.command()
def demo(
    data: Annotated[
        Path | None,
        typer.Option(help="A count .h5ad to use instead of the bundled pbmc68k_reduced."),
    ] = None,
    labels_key: Annotated[
        str | None,
        typer.Option(help="obs column with the true types (required with --data)."),
    ] = None,
    layer: Annotated[str | None, typer.Option(help="Layer with the counts (with --data).")] = None,
    n_top_genes: Annotated[
        int, typer.Option(help="Highly variable genes kept (seurat_v3, with --data).")
    ] = 2000,
    variant: Annotated[
        VariantChoice | None, typer.Option(help="Model variant (default: package default).")
    ] = None,
    label_fraction: Annotated[
        float, typer.Option(help="Fraction of labels kept for the semi-supervised run.")
    ] = 0.1,
    max_epochs: MaxEpochs = None,
    out_dir: Annotated[Path, typer.Option(help="Where the h5ad and figure go.")] = Path(
        "gmmvae_demo"
    ),
    seed: Seed = 0,
) -> None:
    """Cluster and annotate real cells, score against known labels, save h5ad and UMAP.

    Without options: scanpy's bundled pbmc68k_reduced (700 PBMCs, 10 types, log data,
    Gaussian likelihood). With --data FILE --labels-key KEY: any count file (NB likelihood).
    """
    _quiet_lightning()
    import time

    from gmmvae.datasets import pbmc68k
    from gmmvae.demo import PHASES, run_demo
    from gmmvae.pp import select_genes

    with _user_errors():
        start = time.perf_counter()
        if data is None:
            name, adata, likelihood, key = (
                "pbmc68k_reduced (bundled)",
                pbmc68k(),
                "gaussian",
                "bulk_labels",
            )
        else:
            if labels_key is None:
                raise typer.BadParameter("--labels-key is required with --data.")
            name, likelihood, key = str(data), "nb", labels_key
            adata = select_genes(_read(data), n_top_genes, layer=layer)
        loading = time.perf_counter() - start
        console.print(f"[bold]gmmvae demo[/] on {name}: {adata.n_obs} cells x {adata.n_vars} genes")
        result = run_demo(
            adata,
            labels_key=key,
            likelihood=likelihood,
            layer=layer,
            variant=variant.value if variant else None,
            label_fraction=label_fraction,
            max_epochs=max_epochs,
            seed=seed,
            out_dir=out_dir,
        )
    table = Table(title=f"gmmvae demo ({result.n_types} types, seed {seed})")
    table.add_column("task")
    table.add_column("result", justify="right")
    c, s = result.clustering, result.semi_supervised
    table.add_row("clustering ARI", f"{c['ari']:.3f}")
    table.add_row("clustering NMI", f"{c['nmi']:.3f}")
    table.add_row("clustering accuracy (Hungarian)", f"{c['accuracy']:.3f}")
    table.add_row("components used", f"{result.components_used} of {result.n_types}")
    pct = f"{100 * result.label_fraction:g}% labels"
    table.add_row(f"semi-supervised accuracy ({pct})", f"{s['accuracy']:.3f}")
    table.add_row(f"semi-supervised macro-F1 ({pct})", f"{s['macro_f1']:.3f}")
    table.add_row("calibration error (ECE)", f"{s['ece']:.3f}")
    # Where the time went, phase by phase, then the whole run.
    table.add_section()
    table.add_row("time: reading data" + (", gene selection" if data else ""), f"{loading:.1f} s")
    for phase, name in PHASES.items():
        table.add_row(f"time: {name}", f"{result.timings[phase]:.1f} s")
    table.add_row("time: total", f"{loading + result.seconds:.1f} s")
    console.print(table)
    console.print(f"Wrote {result.outputs['h5ad']} and {result.outputs['figure']}.")


if __name__ == "__main__":
    app()
