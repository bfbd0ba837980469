"""Signature conventions of the public API, checked by inspection (as scanpy does)."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

import pytest

import gmmvae
from gmmvae import GMMVAE
from gmmvae.options import LIKELIHOODS, VARIANTS

KW = inspect.Parameter.KEYWORD_ONLY
VAR_KW = inspect.Parameter.VAR_KEYWORD
POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _public_methods() -> dict[str, typing.Callable]:
    """Public methods of GMMVAE as accessed on the class (bound for classmethods)."""
    return {
        name: getattr(GMMVAE, name)
        for name, _ in inspect.getmembers(GMMVAE, callable)
        if not name.startswith("_")
    }


def _module_functions(module) -> dict[str, typing.Callable]:
    return {
        f"{module.__name__}.{name}": f
        for name, f in inspect.getmembers(module, inspect.isfunction)
        if not name.startswith("_") and f.__module__ == module.__name__
    }


def _public_callables() -> dict[str, typing.Callable]:
    found = {f"GMMVAE.{name}": f for name, f in _public_methods().items()}
    found["GMMVAE.__init__"] = GMMVAE.__init__
    for module in (gmmvae.datasets, gmmvae.metrics, gmmvae.evaluation, gmmvae.pl, gmmvae.pp):
        found.update(_module_functions(module))
    return found


def _params(f) -> list[inspect.Parameter]:
    params = list(inspect.signature(f).parameters.values())
    # Methods written in their own module (GMMVAE.generate = generation.generate) take the
    # model first, as ``model`` instead of ``self``.
    bound_elsewhere = "GMMVAE." not in getattr(f, "__qualname__", "GMMVAE.")
    first = ("self", "cls", "model") if bound_elsewhere else ("self", "cls")
    return params[1:] if params and params[0].name in first else params


def _options_after(params: list[inspect.Parameter], n_data: int, name: str) -> None:
    for p in params[n_data:]:
        assert p.kind in (KW, VAR_KW), f"{name}: option {p.name!r} is not keyword-only"


def test_the_expected_methods_exist():
    methods = _public_methods()
    for name in ("setup_anndata", "train", "get_latent", "predict", "save", "load"):
        assert name in methods
    assert set(gmmvae.__all__) >= {"GMMVAE", "GMMVAEInputError", "MissingKeyError", "pl"}
    for name in gmmvae.__all__:
        assert hasattr(gmmvae, name)
    assert isinstance(gmmvae.__version__, str)


@pytest.mark.parametrize("name", sorted(_public_methods()))
def test_methods_take_data_first_then_keyword_only_options(name):
    params = _params(_public_methods()[name])
    names = [p.name for p in params]
    if name == "save":
        assert names[0] == "path"
        n_data = 1
    elif name == "load":
        assert names[:2] == ["path", "adata"]
        n_data = 2
    elif name == "generate":
        # generate(n_cells, *, ...): the model is the data, the first argument its size.
        assert names[0] == "n_cells"
        assert params[0].kind in POSITIONAL
        n_data = 1
    elif name == "load_query_data":
        # scvi-tools spelling: load_query_data(adata, reference_model).
        assert names[:2] == ["adata", "reference_model"]
        n_data = 2
    elif name == "to_device":
        # scvi-tools spelling: to_device(device); the model moves itself.
        assert names == ["device"]
        n_data = 1
    elif name == "train":
        # scvi-tools spelling: train(max_epochs, *, ...); the data is the model's own.
        assert names[0] == "max_epochs"
        assert params[0].kind in POSITIONAL
        n_data = 1
    else:
        assert names[0] == "adata", f"{name}: first parameter is {names[0]!r}"
        assert params[0].kind in POSITIONAL
        n_data = 1
    _options_after(params, n_data, name)


def test_init_takes_adata_then_keyword_only_options():
    params = _params(GMMVAE.__init__)
    assert params[0].name == "adata"
    _options_after(params, 1, "GMMVAE.__init__")


def test_setup_anndata_spelling():
    params = {p.name: p for p in _params(GMMVAE.setup_anndata)}
    assert next(iter(params)) == "adata"
    for key in ("layer", "labels_key", "batch_key", "condition_key", "unlabeled_category"):
        assert params[key].kind == KW


@pytest.mark.parametrize("name", sorted(_module_functions(gmmvae.pl)))
def test_plotting_functions_take_data_first(name):
    f = _module_functions(gmmvae.pl)[name]
    params = _params(f)
    # The data: an AnnData, the real and synthetic AnnData pair, or (pl.history,
    # pl.n_components) the DataFrame the model or select_n_components returned.
    n_data = 2 if params[0].name == "real" else 1
    allowed = (["adata"], ["history"], ["table"], ["real", "synthetic"])
    assert [p.name for p in params[:n_data]] in allowed
    for param in params[:n_data]:
        annotation = str(param.annotation)
        assert "AnnData" in annotation or "DataFrame" in annotation, name
    _options_after(params, n_data, name)
    for option in ("show", "save"):
        assert option in inspect.signature(f).parameters, name


@pytest.mark.parametrize("name", sorted(_public_callables()))
def test_public_callables_documented_and_annotated(name):
    f = _public_callables()[name]
    if name != "GMMVAE.__init__":  # the class docstring documents the constructor
        assert inspect.getdoc(f), f"{name} has no docstring"
    sig = inspect.signature(f)
    for p in _params(f):
        assert p.annotation is not inspect.Parameter.empty, f"{name}: {p.name} not annotated"
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: return not annotated"


def test_classes_documented():
    for cls in (GMMVAE, gmmvae.GMMVAEInputError, gmmvae.MissingKeyError):
        assert inspect.getdoc(cls)
    doc = inspect.getdoc(GMMVAE)
    for p in _params(GMMVAE.__init__):
        assert p.name in doc, f"GMMVAE docstring does not describe {p.name!r}"


def test_option_strings_are_literals():
    hints = typing.get_type_hints(GMMVAE.__init__)
    assert set(typing.get_args(hints["likelihood"])) == set(LIKELIHOODS)
    assert set(typing.get_args(hints["variant"])) == set(VARIANTS)


def test_errors_are_value_and_key_errors():
    assert issubclass(gmmvae.GMMVAEInputError, ValueError)
    assert issubclass(gmmvae.MissingKeyError, gmmvae.GMMVAEInputError)
    assert issubclass(gmmvae.MissingKeyError, KeyError)
    assert str(gmmvae.MissingKeyError("plain message")) == "plain message"  # not quoted


def test_import_has_no_side_effects():
    # Dependencies install their own filters on import: import them first, then compare.
    code = (
        "import logging, warnings\n"
        "import anndata, lightning.pytorch, matplotlib.pyplot, scanpy, sklearn, torch\n"
        "filters = list(warnings.filters)\n"
        "root = list(logging.getLogger().handlers)\n"
        "import gmmvae, gmmvae.model, gmmvae.training, gmmvae.plotting\n"
        "assert list(warnings.filters) == filters, 'warning filters changed'\n"
        "assert logging.getLogger().handlers == root, 'root handlers changed'\n"
        "assert not logging.getLogger('gmmvae').handlers, 'gmmvae logger has handlers'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
