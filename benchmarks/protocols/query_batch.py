"""Reference → query with a batch the reference never saw (scArches-style mapping).

CellBench CEL-seq2: the reference is two plates (every label), the query the third plate, an
unseen batch; seed s holds out plate ``sorted(plates)[s % 3]``, so the three seeds hold out
each plate once. Kang: the reference is the control cells, the query the IFN-β-stimulated
cells mapped as a new batch (``condition`` is the batch column; the same split for every
seed, the seed sets each method's seed); its labels come from Leiden on PCA, so its rows
stand in their own table. Scores on the query: accuracy, macro-F1, ECE. "plate" below is
the held-out batch (for Kang, ``stimulated``).

Methods, each at its defaults:

- ``gmmvae``: gmmvae on the reference (``labels_key``, ``batch_key="plate"``), then
  ``GMMVAE.load_query_data(query, model)`` and ``train()`` on the query (the new plate's
  decoder weights and the encoder trunk learn), ``predict(query)``; the row records the query
  ELBO per cell before and after the query training, and the scores of the same reference
  mapped with ``train_encoder=False`` (only decoder weights learn; labels stay the
  reference's) as ``extra.decoder_only_*``;
- ``gmmvae_with_plate``: the comparison the target names, a gmmvae trained on every cell with
  the query plate's labels hidden (semi-supervised), predicting the query plate;
- ``scanvi_query``: scVI → scANVI on the reference (``batch_key="plate"``), scArches
  ``SCANVI.load_query_data`` and query training with ``weight_decay=0``;
- ``celltypist`` and ``logreg`` (PCA(50) fitted on the reference): no batch input.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import numpy as np

from benchmarks import methods
from benchmarks.protocols import Result, Settings, Unit, classification_scores, single, timed

NAME = "query_batch"
TITLE = "Reference → query across an unseen batch (a plate, or a condition, held out)"
DATASETS = ("cellbench", "kang")
KANG_BATCH = "condition"  # Kang's stimulated cells are the new batch
KANG_QUERY = "stimulated"
METHODS = ("gmmvae", "gmmvae_with_plate", "scanvi_query", "celltypist", "logreg")
NAMES = {
    "gmmvae_with_plate": "gmmvae trained with the query batch (its labels hidden)",
    "scanvi_query": "scANVI (scArches)",
}
TRAINED = ("gmmvae", "gmmvae_with_plate", "scanvi_query")
METRICS = ("accuracy", "macro_f1", "ece")
HEADLINE = "accuracy"
LOWER_IS_BETTER = ("ece",)
DESCRIPTION = (
    "CellBench CEL-seq2 (542 strict cells, 5 cell lines by genotype, 3 plates). Seed s holds "
    "out the plate sorted(plates)[s % 3] as the query (an unseen batch) and trains on the "
    "other two with every label; scores on the held-out plate. gmmvae: `GMMVAE.setup_anndata("
    "ref, labels_key='cell_line', batch_key='plate')`, defaults, then "
    "`GMMVAE.load_query_data(query, model).train()` (the new plate's decoder weights and the "
    "encoder trunk learn; components, decoder and heads frozen) and `predict(query)`; "
    "`extra.query_elbo_before/after` is the query ELBO per cell before and after the query "
    "training, `extra.decoder_only_accuracy/macro_f1` the scores of the same reference mapped "
    "with `train_encoder=False` (the encoder does not read the batch, so its labels equal the "
    "reference model's). gmmvae trained with the plate: one model on all cells with the "
    "query plate's labels set to `Unknown`. scANVI: scVI → `SCANVI.from_scvi_model` on the "
    "reference, `SCANVI.load_query_data` and query training (defaults, `weight_decay=0`). "
    "CellTypist and logistic regression (50 PCs fitted on the reference) read no batch. Kang: "
    "the same with the control cells as the reference and the stimulated cells as the query, "
    "`condition` as the batch column of gmmvae and scANVI (one batch in the reference)."
)


def held_out_plate(ds, seed: int) -> str:
    if ds.name == "kang":
        return KANG_QUERY
    plates = sorted(ds.adata.obs[ds.batch_key].astype(str).unique())
    return plates[seed % len(plates)]


def task_name(ds, plate: str) -> str:
    if ds.name == "kang":
        return f"query {plate} as a new batch"
    return f"query plate {plate}"


def split(ds, seed: int) -> tuple[Any, str, np.ndarray]:
    """(the dataset with its batch column set, the held-out batch, boolean query mask)."""
    if ds.name == "kang":
        ds = dataclasses.replace(ds, batch_key=KANG_BATCH)
    plate = held_out_plate(ds, seed)
    return ds, plate, (ds.adata.obs[ds.batch_key].astype(str) == plate).to_numpy()


def _gmmvae_query(ds, ref_mask, query_mask, seed, max_epochs) -> tuple[Any, dict[str, Any]]:
    import gmmvae

    key = ds.labels_key
    ref = ds.adata[ref_mask].copy()
    ref.obs[key] = ref.obs[key].astype(str).astype("category")
    model = methods.gmmvae_model(ref, ds, seed=seed, max_epochs=max_epochs, labels_key=key)
    query = ds.adata[query_mask].copy()
    mapped = {}
    for train_encoder in (True, False):
        mapped[train_encoder] = gmmvae.GMMVAE.load_query_data(
            query.copy(), model, train_encoder=train_encoder
        )
    before = mapped[True].get_elbo(query)
    for query_model in mapped.values():
        query_model.train(max_epochs, seed=seed, progress_bar=False)
    truth = ds.truth.to_numpy()[query_mask]
    decoder_only = classification_scores(truth, *methods.top(mapped[False].predict(query)))
    extra = {
        **methods.gmmvae_extra(model),
        "query_epochs": int(mapped[True].train_params["epochs_run"]),
        "query_elbo_before": float(before),
        "query_elbo_after": float(mapped[True].get_elbo(query)),
        "decoder_only_elbo_after": float(mapped[False].get_elbo(query)),
        **{f"decoder_only_{k}": v for k, v in decoder_only.items() if k != "ece"},
    }
    return mapped[True].predict(query), extra


def _gmmvae_with_plate(ds, query_mask, seed, max_epochs) -> tuple[Any, dict[str, Any]]:
    key = ds.labels_key
    adata = ds.adata.copy()
    labels = adata.obs[key].astype(str).to_numpy().copy()
    labels[query_mask] = methods.UNKNOWN
    adata.obs[key] = labels
    model = methods.gmmvae_model(adata, ds, seed=seed, max_epochs=max_epochs, labels_key=key)
    probs = model.predict(model.adata[query_mask].copy())
    return probs, methods.gmmvae_extra(model)


def run(ds, seed: int, method: str, max_epochs: int | None, threads: int) -> Result:
    ds, plate, query_mask = split(ds, seed)
    truth = ds.truth.to_numpy()[query_mask]

    def fn():
        if method == "gmmvae":
            probs, extra = _gmmvae_query(ds, ~query_mask, query_mask, seed, max_epochs)
        elif method == "gmmvae_with_plate":
            probs, extra = _gmmvae_with_plate(ds, query_mask, seed, max_epochs)
        elif method == "scanvi_query":
            key = ds.labels_key
            ref = ds.adata[~query_mask].copy()
            ref.obs[key] = ref.obs[key].astype(str).astype("category")
            probs, epochs, size = methods.scanvi(
                ref,
                ds,
                labels_key=key,
                seed=seed,
                threads=threads,
                max_epochs=max_epochs,
                query=ds.adata[query_mask].copy(),
                surgery=True,
                batch_key=ds.batch_key,
            )
            extra = {"epochs": sum(epochs.values()), "epochs_detail": epochs, "batch_size": size}
        else:
            probs, extra = methods.transfer(
                ds, ~query_mask, query_mask, method, seed=seed, threads=threads
            )
        predicted, confidence = methods.top(probs)
        extra = {k: v for k, v in extra.items() if k not in ("novel", "free")}
        extra.update(
            n_reference=int((~query_mask).sum()), n_query=int(query_mask.sum()), plate=plate
        )
        return classification_scores(truth, predicted, confidence), extra

    return timed(fn)


def options(ds, method: str, max_epochs: int | None) -> dict[str, Any]:
    ds = split(ds, 0)[0]
    if method == "gmmvae":
        return {**methods.gmmvae_options(ds, max_epochs), "mapping": "load_query_data"}
    if method == "gmmvae_with_plate":
        return {**methods.gmmvae_options(ds, max_epochs), "mapping": "trained with the plate"}
    if method == "scanvi_query":
        return {**methods.scvi_options(ds, max_epochs), "batch_key": ds.batch_key, "scarches": True}
    return methods.transfer_options(ds, method, max_epochs, surgery=False)


def units(ds, seed: int, settings: Settings) -> list[Unit]:
    task = task_name(ds, held_out_plate(ds, seed))
    out = []
    for method in (m for m in METHODS if m in settings.methods):
        for max_epochs in settings.epochs if method in TRAINED else [None]:
            fn = partial(run, ds, seed, method, max_epochs, settings.threads)
            opts = {method: options(ds, method, max_epochs)}
            out.append(Unit(ds.name, task, seed, opts, single(method, fn)))
    return out
