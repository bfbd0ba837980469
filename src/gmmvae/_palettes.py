"""Colours shared between panels: predicted labels and clusters take the true labels' colours.

Palettes are stored the way scanpy stores them, ``adata.uns[f"{key}_colors"]``: one colour per
category of ``adata.obs[key]``, in category order, so ``sc.pl.umap`` and friends use them too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.colors import is_color_like, rgb_to_hsv, to_hex, to_rgb

#: Colour of the free components (``free_0``, ``free_1``, ...): a neutral grey.
FREE_COLOR = "#b0b0b0"
_FREE = re.compile(r"free_\d+")


def _is_grey(color: str) -> bool:
    return bool(rgb_to_hsv(to_rgb(color))[1] < 0.15)  # saturation: greys are ~0


def _tiers() -> list[list[str]]:
    """scanpy's default palettes (20, 28, 102 colours) without greys or repeats, in order.

    Greys are left out so that no cell type looks like a free component.
    """
    from scanpy.plotting import palettes

    seen: set[str] = set()
    tiers = []
    for palette in (palettes.default_20, palettes.default_28, palettes.default_102):
        tier = [to_hex(c) for c in palette if not _is_grey(c)]
        tiers.append([c for c in dict.fromkeys(tier) if c not in seen])
        seen.update(tier)
    return tiers


def _candidates() -> list[str]:
    return [c for tier in _tiers() for c in tier]


def _categories(adata: AnnData, key: str) -> pd.Index:
    """Categories of ``obs[key]``; a column of strings is made categorical, as scanpy does."""
    if key not in adata.obs:
        msg = f"{key!r} is not a column of adata.obs; columns are {list(adata.obs)}."
        raise KeyError(msg)
    column = adata.obs[key]
    if not isinstance(column.dtype, pd.CategoricalDtype):
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            msg = (
                f"obs[{key!r}] holds {column.dtype} values, not labels; to colour it as labels, "
                f"make it categorical: adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)"
                ".astype('category')."
            )
            raise TypeError(msg)
        adata.obs[key] = column.astype(str).astype("category")
    return adata.obs[key].cat.categories


def _reference_palette(adata: AnnData, key: str, categories: pd.Index) -> list[str]:
    """The reference's stored colours if valid (scanpy's rule), else our grey-free default.

    Greys in stored colours (e.g. matplotlib's tab10 has one) are replaced by unused colours:
    grey is for free components.
    """
    candidates = _candidates()
    stored = adata.uns.get(f"{key}_colors")
    if stored is not None and len(stored) >= len(categories):
        if all(is_color_like(c) for c in stored):
            colors = [to_hex(c) for c in list(stored)[: len(categories)]]
            taken = [c for c in colors if not _is_grey(c)]
            return [_distinct(taken, key) if _is_grey(c) else c for c in colors]
    if len(categories) > len(candidates):
        msg = f"obs[{key!r}] has {len(categories)} categories; at most {len(candidates)} colours."
        raise ValueError(msg)
    return candidates[: len(categories)]


def _hungarian(truth: pd.Series, groups: pd.Series, rows: Sequence[str]) -> dict[str, str]:
    """Each of ``rows`` (categories of ``groups``) to its true label by Hungarian matching.

    Maximises the cells shared by matched pairs (one label per group, one group per label);
    a group matched to a label it shares no cell with stays unmatched.
    """
    from scipy.optimize import linear_sum_assignment

    known = (groups.notna() & truth.notna()).to_numpy()  # cells without a label count for none
    table = pd.crosstab(groups[known].astype(str), truth[known].astype(str))
    table = table.reindex(index=list(rows), fill_value=0)
    if table.shape[1] == 0 or table.shape[0] == 0:
        return {}
    r, c = linear_sum_assignment(table.to_numpy(), maximize=True)
    return {
        str(table.index[i]): str(table.columns[j])
        for i, j in zip(r, c, strict=True)
        if table.iat[i, j] > 0
    }


def match_colors(
    adata: AnnData,
    *,
    reference: str,
    keys: str | Sequence[str],
    match: Literal["auto", "names", "overlap"] = "auto",
    free_color: str = FREE_COLOR,
) -> None:
    """Give the categories of ``keys`` the colours of the matching categories of ``reference``.

    So that true labels, predicted labels and clusters can be read side by side: a predicted
    label gets the colour of the true label of the same name; a cluster gets the colour of the
    true label it overlaps best, by Hungarian matching on the contingency table (one label per
    cluster, one cluster per label, maximising the cells they share). Free components
    (``free_0``, ``free_1``, ...) are grey; categories matched to nothing (a cluster left over
    when there are more clusters than labels, a label name the reference lacks) get colours
    of their own, distinct from the reference's and from one another's.

    Parameters
    ----------
    adata
        Cells with the columns ``reference`` and ``keys`` in ``obs`` (categorical or strings;
        a column of strings is made categorical, as scanpy's plotting does).
    reference
        obs column of the labels whose colours are reused, e.g. the true cell types. Its
        colours are ``adata.uns[f"{reference}_colors"]`` when that holds a colour for each
        category (scanpy's rule; greys among them are replaced, grey is for free components),
        else scanpy's default palette without greys.
    keys
        obs columns to colour like ``reference`` (``reference`` itself is skipped).
    match
        ``"names"``: by category name; ``"overlap"``: by Hungarian matching on the cells;
        ``"auto"``: by name for a column that shares a category name with ``reference``
        (predicted labels), else by overlap (clusters named ``"0".."K-1"``).
    free_color
        Colour of the free components.

    Returns
    -------
    Nothing; writes ``adata.uns[f"{key}_colors"]`` (list of hex strings, one per category of
    ``obs[key]``, in category order) for ``reference`` and each of ``keys``, the palettes that
    ``sc.pl.umap`` / ``sc.pl.embedding`` read.
    """
    if match not in ("auto", "names", "overlap"):
        raise ValueError(f"match must be 'auto', 'names' or 'overlap', got {match!r}.")
    keys = [keys] if isinstance(keys, str) else list(keys)
    ref_categories = _categories(adata, reference)
    ref_colors = _reference_palette(adata, reference, ref_categories)
    adata.uns[f"{reference}_colors"] = ref_colors
    by_name = dict(zip(map(str, ref_categories), ref_colors, strict=True))
    taken = [*ref_colors, to_hex(free_color)]  # colours in use; spare ones are added
    truth = adata.obs[reference]

    for key in keys:
        if key == reference:
            continue
        categories = [str(c) for c in _categories(adata, key)]
        how = match
        if how == "auto":
            how = "names" if set(categories) & set(by_name) else "overlap"
        matched: dict[str, str] = {}
        if how == "names":
            matched = {c: c for c in categories if c in by_name}
        else:
            rows = [c for c in categories if not _FREE.fullmatch(c)]
            matched = _hungarian(truth, adata.obs[key], rows)
        colors = []
        for category in categories:
            if category in matched:
                colors.append(by_name[matched[category]])
            elif _FREE.fullmatch(category):
                colors.append(to_hex(free_color))
            else:
                colors.append(_distinct(taken, key))
        adata.uns[f"{key}_colors"] = colors


def _distinct(taken: list[str], key: str) -> str:
    """An unused default colour, the farthest (RGB distance) from every colour in ``taken``.

    Appends it to ``taken``, so successive calls give colours distinct from one another too.
    """
    # From the first palette with a colour left: scanpy's 20 before its 28 before its 102.
    free = next(([c for c in t if c not in taken] for t in _tiers() if set(t) - set(taken)), [])
    if not free:
        raise ValueError(f"ran out of distinct colours for obs[{key!r}].")
    used = np.array([to_rgb(c) for c in taken]).reshape(-1, 3)
    spare = np.array([to_rgb(c) for c in free])
    if len(used):
        gaps = np.linalg.norm(spare[:, None, :] - used[None, :, :], axis=2).min(1)
        choice = free[int(np.argmax(gaps))]  # first of the farthest on ties: deterministic
    else:
        choice = free[0]
    taken.append(choice)
    return choice
