"""The `gmmvae` command: train, annotate, embed and demo on temporary h5ad files."""

from __future__ import annotations

import anndata as ad
import pandas as pd
import pytest
from typer.testing import CliRunner

from gmmvae import GMMVAE
from gmmvae.cli import app
from gmmvae.datasets import mask_labels, simulate

runner = CliRunner()


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory: pytest.TempPathFactory):
    adata = simulate(300, 80, 3, seed=1, marker_log_fold=2.5)
    adata.obs["labels"] = mask_labels(adata.obs["cell_type"], 0.2, seed=0)
    path = tmp_path_factory.mktemp("cli") / "cells.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def model_dir(h5ad, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cli") / "model"
    result = runner.invoke(
        app,
        [
            "train",
            str(h5ad),
            "--out",
            str(out),
            "--labels-key",
            "labels",
            "--max-epochs",
            "30",
            "--seed",
            "0",
            "--accelerator",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_a_loadable_model(model_dir):
    assert (model_dir / "config.json").is_file()
    assert (model_dir / "model.pt").is_file()


def test_annotate_writes_predictions(model_dir, h5ad, tmp_path):
    out = tmp_path / "annotated.h5ad"
    result = runner.invoke(app, ["annotate", str(model_dir), str(h5ad), "--out", str(out)])
    assert result.exit_code == 0, result.output
    annotated = ad.read_h5ad(out)
    labels = set(annotated.obs["gmmvae_label"].astype(str))
    assert labels <= {"type_0", "type_1", "type_2", "free_0"}
    assert annotated.obsm["gmmvae_probs"].shape == (300, 4)
    truth = annotated.obs["cell_type"].astype(str)
    assert (annotated.obs["gmmvae_label"].astype(str) == truth).mean() > 0.8
    assert "X_gmmvae" in annotated.obsm


def test_embed_writes_latent(model_dir, h5ad, tmp_path):
    out = tmp_path / "embedded.h5ad"
    result = runner.invoke(
        app, ["embed", str(model_dir), str(h5ad), "--out", str(out), "--key-added", "mine"]
    )
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(out).obsm["X_mine"].shape == (300, 16)


def test_train_missing_key_is_a_clear_error(h5ad, tmp_path):
    result = runner.invoke(
        app, ["train", str(h5ad), "--out", str(tmp_path / "m"), "--labels-key", "label"]
    )
    assert result.exit_code == 1
    assert "not a column of adata.obs" in result.output
    assert "Did you mean 'labels'" in result.output


def test_annotate_missing_file_is_a_clear_error(model_dir, tmp_path):
    result = runner.invoke(
        app, ["annotate", str(model_dir), str(tmp_path / "nope.h5ad"), "--out", "x.h5ad"]
    )
    assert result.exit_code != 0
    assert "does not exist" in result.output


def test_annotate_genes_mismatch_names_missing_genes(model_dir, h5ad, tmp_path):
    adata = ad.read_h5ad(h5ad)[:, 5:].copy()
    path = tmp_path / "fewer_genes.h5ad"
    adata.write_h5ad(path)
    result = runner.invoke(app, ["annotate", str(model_dir), str(path), "--out", "x.h5ad"])
    assert result.exit_code == 1
    assert "gene_0" in result.output


def test_every_option_has_help():
    for command in ("train", "choose-k", "annotate", "embed", "map-query", "demo"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Options" in result.output


def test_demo_on_a_count_file(h5ad, tmp_path):
    out_dir = tmp_path / "demo"
    result = runner.invoke(
        app,
        [
            "demo",
            "--data",
            str(h5ad),
            "--labels-key",
            "cell_type",
            "--max-epochs",
            "20",
            "--out-dir",
            str(out_dir),
            "--label-fraction",
            "0.2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "clustering ARI" in result.output
    assert "semi-supervised accuracy" in result.output
    # The time of each phase, not one headline number for everything.
    from gmmvae.demo import PHASES

    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    for name in ["reading data, gene selection", *PHASES.values(), "total"]:
        assert f"time: {name}" in rows, result.output
        assert rows[f"time: {name}"].split("│")[2].strip().endswith(" s")
    assert (out_dir / "annotated.h5ad").is_file()
    assert (out_dir / "latent_umap.png").stat().st_size > 10_000


def test_existing_output_needs_force(model_dir, h5ad, tmp_path):
    out = tmp_path / "annotated.h5ad"
    out.write_text("precious")
    result = runner.invoke(app, ["annotate", str(model_dir), str(h5ad), "--out", str(out)])
    assert result.exit_code == 1
    assert "--force" in result.output
    assert out.read_text() == "precious"
    forced = runner.invoke(
        app, ["annotate", str(model_dir), str(h5ad), "--out", str(out), "--force"]
    )
    assert forced.exit_code == 0, forced.output
    assert ad.read_h5ad(out).n_obs == 300


def test_usage_error_exits_2():
    assert runner.invoke(app, ["annotate"]).exit_code == 2
    assert runner.invoke(app, ["train", "x.h5ad", "--likelihood", "gamma"]).exit_code == 2


def test_generate_writes_counts(model_dir, tmp_path):
    out = tmp_path / "synthetic.h5ad"
    result = runner.invoke(
        app,
        [
            "generate",
            str(model_dir),
            "--n",
            "40",
            "--cell-type",
            "type_1",
            "--cell-type",
            "type_2",
            "--out",
            str(out),
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    synthetic = ad.read_h5ad(out)
    assert synthetic.n_obs == 80
    assert set(synthetic.obs["gmmvae_label"].astype(str)) == {"type_1", "type_2"}
    bad = runner.invoke(
        app, ["generate", str(model_dir), "--cell-type", "B", "--out", str(tmp_path / "x.h5ad")]
    )
    assert bad.exit_code == 1
    assert "known ones are" in bad.output


def test_backed_train_and_annotate_read_from_disk(model_dir, h5ad, tmp_path):
    """--backed reads blocks from the file; results equal the in-memory command's."""
    out = tmp_path / "model_backed"
    args = ["train", str(h5ad), "--out", str(out), "--max-epochs", "2", "--backed"]
    args += ["--n-components", "3", "--accelerator", "cpu", "--devices", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    backed_out, memory_out = tmp_path / "backed.h5ad", tmp_path / "memory.h5ad"
    for flags, target in (["--backed"], backed_out), ([], memory_out):
        result = runner.invoke(
            app, ["annotate", str(model_dir), str(h5ad), "--out", str(target), *flags]
        )
        assert result.exit_code == 0, result.output
    backed, memory = ad.read_h5ad(backed_out), ad.read_h5ad(memory_out)
    assert (backed.obs["gmmvae_label"] == memory.obs["gmmvae_label"]).all()
    assert abs(backed.obsm["X_gmmvae"] - memory.obsm["X_gmmvae"]).max() < 1e-5


def test_train_strategy_lightning_rejects_is_a_clear_error(h5ad, tmp_path):
    args = ["train", str(h5ad), "--out", str(tmp_path / "m"), "--n-components", "3"]
    result = runner.invoke(app, [*args, "--strategy", "no-such-strategy"])
    assert result.exit_code == 1
    assert "Lightning rejected" in result.output


def test_train_mixture_placement_option(h5ad, tmp_path):
    from gmmvae.model import GMMVAE

    out = tmp_path / "kmeans"
    args = ["train", str(h5ad), "--out", str(out), "--n-components", "3", "--max-epochs", "4"]
    result = runner.invoke(app, [*args, "--mixture-placement", "kmeans", "--accelerator", "cpu"])
    assert result.exit_code == 0, result.output
    assert GMMVAE.load(out).train_params["mixture_placement"] == "kmeans"
    bad = runner.invoke(app, [*args, "--mixture-placement", "spectral"])
    assert bad.exit_code != 0
    assert "spectral" in bad.output


@pytest.mark.filterwarnings("ignore:The mixture collapsed")
def test_choose_k_prints_the_table_and_writes_csv_and_plot(h5ad, tmp_path):
    csv, png = tmp_path / "k.csv", tmp_path / "k.png"
    args = ["choose-k", str(h5ad), "--candidates", "2,3", "--held-out", "0.2"]
    args += ["--max-epochs", "5", "--n-mc-samples", "5", "--out", str(csv), "--plot", str(png)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Chosen K =" in result.output
    table = pd.read_csv(csv)
    assert list(table["n_components"]) == [2, 3] and table["selected"].sum() == 1
    assert png.stat().st_size > 0
    bad = runner.invoke(app, ["choose-k", str(h5ad), "--candidates", "four"])
    assert bad.exit_code == 2


def test_map_query_trains_the_new_batch_and_writes_labels(tmp_path):
    adata = simulate(300, 60, 3, seed=2, n_batches=3, marker_log_fold=2.5)
    reference, query = (tmp_path / "reference.h5ad", tmp_path / "query.h5ad")
    adata[adata.obs["batch"] != "batch_2"].copy().write_h5ad(reference)
    adata[adata.obs["batch"] == "batch_2"].copy().write_h5ad(query)
    ref_dir, query_dir, annotated = (tmp_path / "ref", tmp_path / "qm", tmp_path / "out.h5ad")
    common = ["--max-epochs", "5", "--accelerator", "cpu"]
    train = ["train", str(reference), "--out", str(ref_dir), "--batch-key", "batch"]
    result = runner.invoke(app, [*train, "--n-components", "3", *common])
    assert result.exit_code == 0, result.output
    mapped = ["map-query", str(ref_dir), str(query), "--out", str(query_dir)]
    result = runner.invoke(app, [*mapped, "--annotated", str(annotated), *common])
    assert result.exit_code == 0, result.output
    assert "new batches: batch_2" in " ".join(result.output.split())  # rich wraps lines
    out = ad.read_h5ad(annotated)
    assert {"gmmvae_label", "gmmvae_confidence", "gmmvae_novel"} <= set(out.obs.columns)
    assert out.obsm["X_gmmvae"].shape[0] == out.n_obs
    loaded = GMMVAE.load(query_dir, out)
    assert loaded.is_query and loaded.registry["query_batches"] == ["batch_2"]
    # cells of the reference's own batches: nothing to train, a clear error naming the fix
    again = ["map-query", str(ref_dir), str(reference), "--out", str(tmp_path / "qm2")]
    result = runner.invoke(app, [*again, *common])
    assert result.exit_code == 1
    assert "nothing to map; annotate it" in " ".join(result.output.split())


def test_map_query_needs_a_reference_with_batches(model_dir, h5ad, tmp_path):
    result = runner.invoke(
        app, ["map-query", str(model_dir), str(h5ad), "--out", str(tmp_path / "q")]
    )
    assert result.exit_code == 1
    assert "without a batch_key" in result.output


def test_de_writes_the_api_table_and_a_volcano(model_dir, h5ad, tmp_path):
    out, volcano = tmp_path / "de.csv", tmp_path / "volcano.png"
    args = ["de", str(model_dir), str(h5ad), "--out", str(out), "--groupby", "cell_type"]
    result = runner.invoke(app, [*args, "--n-samples", "400", "--volcano", str(volcano)])
    assert result.exit_code == 0, result.output
    assert volcano.stat().st_size > 0
    table = pd.read_csv(out, index_col="gene")
    assert list(table["comparison"].unique()) == [f"type_{t} vs Rest" for t in range(3)]
    adata = ad.read_h5ad(h5ad)
    expected = GMMVAE.load(model_dir, adata).differential_expression(
        adata, groupby="cell_type", n_samples=400, seed=0
    )
    pd.testing.assert_index_equal(table.index, expected.index.rename("gene"))
    assert table["proba_de"].to_numpy() == pytest.approx(expected["proba_de"].to_numpy())
    assert table["is_de_fdr_0.05"].dtype == bool  # the calls survive the CSV
    shown = " ".join(result.output.split())
    assert all(f"type_{t} vs Rest" in shown for t in range(3))  # the top genes on screen


def test_de_one_pair_and_unknown_group(model_dir, h5ad, tmp_path):
    out = tmp_path / "pair.csv"
    args = ["de", str(model_dir), str(h5ad), "--out", str(out), "--groupby", "cell_type"]
    pair = ["--group1", "type_0", "--group2", "type_1", "--n-samples", "200"]
    result = runner.invoke(app, [*args, *pair, "--mode", "vanilla"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, index_col="gene")
    assert set(table["comparison"]) == {"type_0 vs type_1"}
    assert "proba_m1" in table.columns
    result = runner.invoke(app, [*args, "--force", "--group1", "type_9"])
    assert result.exit_code == 1
    assert "type_9" in result.output


def test_normalize_writes_a_batch_corrected_layer(tmp_path):
    adata = simulate(240, 50, 2, seed=3, n_batches=2, marker_log_fold=2.5)
    data, model, out = tmp_path / "cells.h5ad", tmp_path / "model", tmp_path / "norm.h5ad"
    adata.write_h5ad(data)
    train = ["train", str(data), "--out", str(model), "--batch-key", "batch", "--n-components"]
    result = runner.invoke(app, [*train, "2", "--max-epochs", "3", "--accelerator", "cpu"])
    assert result.exit_code == 0, result.output
    args = ["normalize", str(model), str(data), "--out", str(out), "--n-samples", "3"]
    result = runner.invoke(app, [*args, "--transform-batch", "batch_0"])
    assert result.exit_code == 0, result.output
    written = ad.read_h5ad(out)
    layer = written.layers["gmmvae_normalized"]
    assert layer.shape == adata.shape
    assert layer.sum(1) == pytest.approx(1e4, rel=1e-3)
    assert written.uns["gmmvae_normalized"]["params"]["transform_batch"] == "batch_0"
    expected = GMMVAE.load(model, adata).get_normalized_expression(
        adata, transform_batch="batch_0", n_samples=3, seed=0
    )
    assert layer == pytest.approx(expected.to_numpy(), rel=1e-5)
    result = runner.invoke(app, [*args, "--force", "--transform-batch", "batch_7"])
    assert result.exit_code == 1
    assert "batch_7" in result.output
