"""Novelty detection (DESIGN.md §2): hold one cell type out of the reference, map the query.

On the stratified 70/30 split of the query benchmark, every cell of the held-out type is
removed from the reference (its query cells stay). Each method's novelty score for a query
cell is 1 - top-class confidence; gmmvae also offers the probability of its free component(s)
and the ``gmmvae_novel`` flag, CellTypist its "Unassigned" call (no one-vs-rest probability
above 0.5). AUROC of the score for held-out-type cells against the known-type query cells;
TPR/FPR of the binary flags; accuracy on the known-type query cells. Rows go to
benchmarks/results/novelty.jsonl; the table goes between the `novelty` markers.

    python benchmarks/novelty.py [--max-epochs 100] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import re

import numpy as np
from sklearn.metrics import roc_auc_score

import peers
import query as q
from common import ResultStore, write_section

HELD_OUT = {"pbmc68k_reduced": "CD19+ B", "kang_all": "B", "kang_all_condition": "B"}
METHODS = q.ALL_METHODS


def run(setting: str, method: str, seed: int, max_epochs: int) -> dict:
    data, query_mask, _ = q.split(setting, seed)
    truth = data.truth.to_numpy()
    held = HELD_OUT[setting]
    ref_mask = ~query_mask & (truth != held)
    predicted, confidence, row, cells = q.predict_query(
        data, ref_mask, query_mask, method, seed, max_epochs, surgery=False
    )
    novel = truth[query_mask] == held
    row.update(held_out=held, n_novel=int(novel.sum()), n_known=int((~novel).sum()))
    row["auroc_confidence"] = float(roc_auc_score(novel, 1.0 - confidence))
    if "p_free" in cells:
        row["auroc_p_free"] = float(roc_auc_score(novel, cells["p_free"]))
    if "novel_flag" in cells:
        flag = np.asarray(cells["novel_flag"], dtype=bool)
        row["flag_tpr"] = float(flag[novel].mean())
        row["flag_fpr"] = float(flag[~novel].mean())
    row["known_accuracy"] = float((predicted[~novel] == truth[query_mask][~novel]).mean())
    return row


def render(store: ResultStore, args) -> None:
    rows = peers.merged_rows("novelty", ["setting", "method", "seed"], args.max_epochs)
    if not rows:
        return
    order = {m: i for i, m in enumerate(METHODS)}
    sets = {s: i for i, s in enumerate(HELD_OUT)}
    rows.sort(key=lambda r: (sets.get(r["setting"], 9), order.get(r["method"], 99)))
    for r in rows:
        r["held-out type"] = r["held_out"]
        for k in ("auroc_p_free", "flag_tpr", "flag_fpr"):
            r.setdefault(k, float("nan"))
    dates = sorted({r["date"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    text = [
        "## Novelty: one type held out of the reference",
        "",
        f"Command: `python benchmarks/novelty.py --max-epochs {args.max_epochs} --seeds "
        f"{' '.join(map(str, seeds))}` (dates {dates[0]}–{dates[-1]}; {rows[-1]['versions']}).",
        peers.machines_note(rows),
        "The 70/30 split of the query table with every cell of the held-out type removed from "
        "the reference (its query cells kept); methods trained as in the query table. "
        "`auroc_confidence`: AUROC of 1 - top-class confidence for held-out-type query cells "
        "vs known-type query cells (every method offers this). `auroc_p_free`: gmmvae's "
        "probability of its free component. `flag_tpr`/`flag_fpr`: share of held-out-type / "
        "known-type query cells flagged by the method's own binary call — gmmvae's "
        "`gmmvae_novel` (a free component wins or the top probability < 0.5), CellTypist's "
        "'Unassigned' of `mode='prob match'` (no one-vs-rest probability above 0.5); scANVI "
        "and logistic regression have no such call (nan). `known_accuracy`: accuracy on the "
        "known-type query cells.",
        "",
        peers.table(
            rows,
            ["setting", "held-out type", "method"],
            [
                "auroc_confidence",
                "auroc_p_free",
                "flag_tpr",
                "flag_fpr",
                "known_accuracy",
                "device_seconds",
                "cpu_seconds",
            ],
        ),
        "",
        "![novelty AUROC](benchmarks/figures/novelty_auroc.png)",
    ]
    write_section("novelty", re.sub(r"nan ± \S+", "–", "\n".join(text)))
    peers.bar_chart(rows, "auroc_confidence", peers.FIGURES / "novelty_auroc.png", group="setting")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(HELD_OUT))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--no-render", action="store_true")
    args = parser.parse_args()
    peers.quiet()
    store = peers.store("novelty")

    def jobs():
        for setting in args.settings:
            for seed in args.seeds:
                for method in args.methods:
                    key = {
                        "setting": setting,
                        "method": method,
                        "seed": seed,
                        "max_epochs": args.max_epochs,
                    }
                    yield (
                        key,
                        (
                            lambda setting=setting, method=method, seed=seed: run(
                                setting, method, seed, args.max_epochs
                            )
                        ),
                    )

    if not args.render_only:
        peers.run_rows(store, jobs(), None if args.no_render else lambda: render(store, args))
    if not args.no_render:
        render(store, args)


if __name__ == "__main__":
    main()
