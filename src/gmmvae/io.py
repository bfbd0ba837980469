"""Save and load a model directory: ``config.json`` (human-readable) + ``model.pt`` (state dict).

Writes go to a temporary sibling directory that is renamed into place, so a crash during
``save`` never leaves a half-written model where a good one was. Weights load with
``weights_only=True``: a model file cannot execute code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gmmvae.errors import GMMVAEInputError, ModelExistsError, ModelNotFoundError

if TYPE_CHECKING:
    from gmmvae.model import GMMVAE

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"


def save_directory(
    path: str | os.PathLike,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``config`` and ``state_dict`` into directory ``path`` atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ModelExistsError(f"{path} exists; pass overwrite=True to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with open(tmp / CONFIG_FILE, "w") as f:
            json.dump({"format_version": FORMAT_VERSION, **config}, f, indent=2)
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp / WEIGHTS_FILE)
        if path.exists():
            # Move the old model aside first: a directory cannot be replaced in one rename.
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_directory(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a model directory written by :func:`save_directory`; errors say what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(
            f"{path} is not a model directory (written by model.save); check the path."
        )
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.is_file():
            raise GMMVAEInputError(f"{p} is missing; {path} is not a complete gmmvae model.")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GMMVAEInputError(
            f"{config_path} is not valid JSON ({err}); re-save the model."
        ) from err
    if not isinstance(config, dict):
        raise GMMVAEInputError(
            f"{config_path} holds a JSON {type(config).__name__}, not a gmmvae config object; "
            "re-save the model."
        )
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise GMMVAEInputError(
            f"{path} was saved in model format {version!r}; this gmmvae reads up to format "
            f"{FORMAT_VERSION}. Upgrade gmmvae (pip install -U gmmvae)."
        )
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise GMMVAEInputError(
            f"{weights_path} could not be read as gmmvae weights ({type(err).__name__}: {err}); "
            "the file is corrupted or not a gmmvae model. Re-save or retrain the model."
        ) from err
    return config, state


def model_state(model: GMMVAE) -> dict[str, Any]:
    """Everything but the weights that a saved model needs, JSON-ready."""
    return {
        "module": asdict(model.config),
        "registry": _jsonable(model.registry),
        "gene_names": model.gene_names,
        "component_names": model.component_names,
        "is_trained": model.is_trained,
        "train_params": model.train_params,
        "generation_summary": model.generation_summary,
        "history": model.history.reset_index().to_dict(orient="list"),
        "versions": {p: version(p) for p in ("gmmvae", "torch", "anndata", "lightning")},
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value
