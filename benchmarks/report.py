"""Tables and the one-screen summary in BENCHMARKS.md, from the current rows of each store.

Per (dataset, task, method): mean ± sd over seeds (sd with ddof=1), n seeds. gmmvae against a
peer: a difference within one sd (the larger of the two) is a tie; otherwise gmmvae wins or
loses, written the same way either way. Fewer than 2 seeds on either side: no call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import (
    BENCHMARKS_MD,
    FIGURES,
    PROTOCOLS,
    QUICK_EPOCHS,
    QUICK_RESULTS,
    datasets,
    plots,
    store,
)
from benchmarks.methods import NAMES as METHOD_NAMES
from benchmarks.methods import VARIANT_METHODS
from benchmarks.protocols import MODULES, module

# Protocols added after rows were stored are registered here rather than in
# protocols/__init__.py, whose bytes are in every row's fingerprint (store.BENCH_CODE):
# editing it would make every stored row of every protocol stale. __main__ imports this
# module before it looks up a protocol.
MODULES.setdefault("integration", "integration")
# Later still: every protocol of store.PROTOCOL_FILES that benchmarks.PROTOCOLS lacks (de,
# choose_k), each in protocols/<name>.py; they render after the others.
LATER_PROTOCOLS = tuple(p for p in store.PROTOCOL_FILES if p not in PROTOCOLS)
for _protocol in LATER_PROTOCOLS:
    MODULES.setdefault(_protocol, _protocol)
ALL_PROTOCOLS = (*PROTOCOLS, *LATER_PROTOCOLS)
# Display names: methods.NAMES (hashed like protocols/__init__.py) and the protocols' own.
NAMES = {
    **METHOD_NAMES,
    **{k: v for p in ALL_PROTOCOLS for k, v in getattr(module(p), "NAMES", {}).items()},
}
LEIDEN_LABELS = "kang"  # the dataset whose labels Leiden on PCA made
# Condition-dependent protocols: their Kang rows are summarised apart (labels Leiden-made).
CONDITION_PROTOCOLS = ("query", "synthetic", "integration")
METRIC_NAMES = {
    "ari": "ARI",
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "auroc": "AUROC of 1 − confidence",
    "auroc_own": "AUROC of the method's own novelty score",
    "total": "total (0.4 batch + 0.6 bio)",
}


# ----------------------------------------------------------------------------------- rows
def cap(options: dict[str, Any], quick: bool) -> int | None:
    """The shared epoch cap a row ran under, None at the method's default (and at the
    quick runs' epochs)."""
    value = options.get("max_epochs")
    return None if value is None or (quick and value == QUICK_EPOCHS) else int(value)


def label(method: str, cap: int | None) -> str:
    """Display name; a shared epoch cap shows in it ("gmmvae (100 epochs)")."""
    name = NAMES.get(method, method)
    return name if cap is None else f"{name} ({cap} epochs)"


def load(protocol: str, *, quick: bool = False, include_stale: bool = True) -> pd.DataFrame:
    """The current rows of a protocol, flattened (scores as columns)."""
    rows = store.current_rows(
        store.Store(protocol, quick=quick).rows(), protocol, include_stale=include_stale
    )
    flat = []
    for r in rows:
        row_cap = cap(r.get("options") or {}, quick)
        name = label(r["method"], row_cap) + (" [stale]" if r["stale"] else "")
        flat.append(
            {
                **{k: r.get(k) for k in ("dataset", "task", "method", "seed", "seconds", "epochs")},
                "label": name,
                "cap": -1 if row_cap is None else row_cap,  # -1: a groupable "default"
                "default": row_cap is None and not r["stale"],
                "made_by": r.get("commit", "?") + (" (dirty)" if r.get("dirty") else ""),
                "stale": r["stale"],
                "date": r.get("date", "")[:10],
                "machine": _machine(r.get("machine") or {}),
                "command": r.get("command", ""),
                "error": r.get("error"),
                "options": r.get("options") or {},
                "extra": r.get("extra") or {},
                **(r.get("scores") or {}),
            }
        )
    return pd.DataFrame(flat)


def _machine(m: dict[str, Any]) -> str:
    threads, accelerator = m.get("torch_threads"), m.get("accelerator")
    return f"{m.get('cpu_count')} CPUs, {threads} torch thread(s), {accelerator}"


# ------------------------------------------------------------------------------ statistics
def stats(values: pd.Series) -> tuple[float, float, int]:
    """(mean, sd with ddof=1 or NaN, n) of the non-missing values."""
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(float)
    if not len(v):
        return np.nan, np.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else np.nan, len(v)


def fmt(mean: float, sd: float, n: int, digits: int = 3) -> str:
    if n == 0:
        return "–"
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def call(ours: tuple, theirs: tuple, *, lower_is_better: bool = False) -> str:
    """gmmvae vs a peer on (mean, sd, n) each: 'tie', 'gmmvae wins', 'gmmvae loses'."""
    (m1, s1, n1), (m2, s2, n2) = ours, theirs
    if n1 < 2 or n2 < 2:
        return "no call (< 2 seeds)"
    diff = m1 - m2
    if abs(diff) <= max(s1, s2):
        return "tie"
    better = diff < 0 if lower_is_better else diff > 0
    return "gmmvae wins" if better else "gmmvae loses"


def made_by(group: pd.DataFrame) -> str:
    """Which commit made which seeds, e.g. '9106e07' or '9106e07: seeds 0, 1; a3a7d3f: 2'."""
    by = group.groupby("made_by")["seed"].apply(lambda s: ", ".join(map(str, sorted(s))))
    if len(by) == 1:
        return by.index[0]
    return "; ".join(f"{c}: seeds {s}" for c, s in by.items())


# ---------------------------------------------------------------------------------- tables
def table(frame: pd.DataFrame, proto) -> str:
    """Markdown table: one line per (dataset, task, method), metrics as mean ± sd."""
    ok = frame[frame["error"].isna()]
    metrics = [m for m in proto.METRICS if m in ok.columns]
    head = proto.HEADLINE
    cols = ["data", "task", "method", *metrics, "seeds", "seconds", "epochs"]
    cols.append(f"{METRIC_NAMES.get(head, head)} vs gmmvae")
    lines = ["| " + " | ".join([*cols, "made by"]) + " |", "|" + "---|" * (len(cols) + 1)]
    for (ds, task), part in ok.groupby(["dataset", "task"], sort=False):
        for name, group in part.groupby("label", sort=False):
            # A peer is compared with gmmvae under the same epoch cap (or both at defaults).
            ours = part[(part["method"] == "gmmvae") & (part["cap"] == group["cap"].iloc[0])]
            ref = stats(ours[head]) if len(ours) else (np.nan, np.nan, 0)
            cells = [ds, task or "–", name]
            cells += [fmt(*stats(group[m]), digits=_digits(m)) for m in metrics]
            cells += [str(group["seed"].nunique()), fmt(*stats(group["seconds"]), digits=1)]
            cells.append(fmt(*stats(group["epochs"]), digits=0))
            method = group["method"].iloc[0]  # variants are compared with the default
            peer = not method.startswith("gmmvae") or method in VARIANT_METHODS
            verdict = "–"
            if peer and ref[2]:
                verdict = call(
                    ref, stats(group[head]), lower_is_better=head in proto.LOWER_IS_BETTER
                )
            lines.append("| " + " | ".join([*cells, verdict, made_by(group)]) + " |")
    return "\n".join(_drop_constant(lines, {"task": "–", "made by": None}))


def _digits(metric: str) -> int:
    return 0 if metric.startswith("n_") else 3


def _drop_constant(lines: list[str], columns: dict[str, str | None]) -> list[str]:
    """Drop a column of a markdown table whose rows all hold one value: ``columns`` maps a
    header to the only value that may be dropped (None: any; the text says it once)."""
    rows = [line.strip("|").split(" | ") for line in lines]
    header = [c.strip() for c in rows[0]]
    drop = set()
    for i, name in enumerate(header):
        values = {r[i].strip() for r in rows[2:]}
        if name in columns and len(values) <= 1 and columns[name] in (None, *values):
            drop.add(i)
    return [
        "| " + " | ".join(c.strip() for i, c in enumerate(r) if i not in drop) + " |"
        if k != 1
        else "|" + "---|" * (len(header) - len(drop))
        for k, r in enumerate(rows)
    ]


def _order(frame: pd.DataFrame, proto) -> pd.DataFrame:
    ds_rank = {d: i for i, d in enumerate(proto.DATASETS)}
    m_rank = {m: i for i, m in enumerate(proto.METHODS)}
    key = frame.assign(
        _d=frame["dataset"].map(ds_rank).fillna(99),
        _t=frame["task"].map(_task_rank),
        _m=frame["method"].map(m_rank).fillna(99),
        _c=frame["label"].str.len(),
    )
    return key.sort_values(["_d", "_t", "_m", "_c", "seed"], kind="stable").drop(
        columns=["_d", "_t", "_m", "_c"]
    )


def _task_rank(task: str) -> float:
    """Numeric tasks ("1% labels") sort by value, others keep their name order."""
    head = str(task).split("%")[0]
    try:
        return float(head)
    except ValueError:
        return 0.0


def provenance_lines(frame: pd.DataFrame, quick: bool) -> list[str]:
    """Command(s), seeds, commits, dates, machines and total wall time of the rows shown."""
    commands = sorted(set(frame["command"]))
    seeds = " ".join(map(str, sorted(frame["seed"].unique())))
    dates = sorted(frame["date"])
    machines = sorted(set(frame["machine"]))
    hours = pd.to_numeric(frame["seconds"]).sum() / 3600
    lines = [
        "Command(s): " + "; ".join(f"`{c}`" for c in commands[:4]),
        f"Seeds: {seeds}. Commits: {', '.join(sorted(set(frame['made_by'])))}. "
        f"Dates: {dates[0]} – {dates[-1]}. Total wall time of these rows: {hours:.2f} h.",
        "Machine(s): "
        + "; ".join(machines)
        + (
            " — wall times from different machines are not comparable."
            if len(machines) > 1
            else "."
        ),
    ]
    if frame["made_by"].str.contains("dirty").any():
        lines.append("Rows marked (dirty) ran with uncommitted changes in src/ or benchmarks/.")
    if frame["stale"].any():
        commits = sorted(set(frame.loc[frame["stale"], "made_by"]))
        lines.append(
            "Rows marked [stale] were made by code that has changed since (at "
            + ", ".join(commits)
            + "); they stay until a rerun replaces them (`--current-only` hides them)."
        )
    if quick:
        lines.insert(0, "**QUICK smoke rows: tiny subsamples and 3 epochs; not results.**")
    return lines


def section(protocol: str, *, quick: bool = False, include_stale: bool = True) -> str:
    """The BENCHMARKS.md section of one protocol."""
    proto = module(protocol)
    frame = load(protocol, quick=quick, include_stale=include_stale)
    text = [f"## {proto.TITLE}", "", proto.DESCRIPTION, ""]
    if frame.empty:
        return "\n".join([*text, f"(no current rows yet: `python -m benchmarks {protocol}`)"])
    frame = _order(frame, proto)
    if hasattr(proto, "tables"):  # rows that need tables of their own (synthetic, speed)
        text += [*provenance_lines(frame, quick), "", *proto.tables(frame, quick=quick)]
        return "\n".join([*text, "", *_failures(frame)]).rstrip()
    text += [f"- `{d}`: {datasets.DESCRIPTIONS[d]}" for d in frame["dataset"].unique()]
    text += ["", *provenance_lines(frame, quick), ""]
    everything, is_variant = frame, frame["method"].isin(list(VARIANT_METHODS))
    frame = frame[~is_variant]
    independent = frame[frame["dataset"] != LEIDEN_LABELS]
    leiden = frame[frame["dataset"] == LEIDEN_LABELS]
    if not independent.empty:
        text += [table(independent, proto), ""]
    if not leiden.empty:
        text += [
            "### Kang: labels from Leiden on PCA (not independent truth)",
            "",
            table(leiden, proto),
            "",
        ]
    if is_variant.any():
        text += _variants(frame, everything[is_variant], proto)
    text += _failures(everything)
    if not quick and not independent.empty:
        path = plots.bar_chart(independent, proto.HEADLINE, FIGURES / f"{proto.NAME}.png")
        if path is not None:
            text += [f"![{proto.HEADLINE}]({path.relative_to(BENCHMARKS_MD.parent)})"]
    return "\n".join(text).rstrip()


def _variants(frame: pd.DataFrame, variants: pd.DataFrame, proto) -> list[str]:
    """The "gmmvae variants" table: the default gmmvae and its variants, same data and seeds."""
    rows = _order(pd.concat([frame[frame["method"] == "gmmvae"], variants]), proto)
    kang = LEIDEN_LABELS in set(rows["dataset"])
    return [
        "### gmmvae variants",
        "",
        "The same training as gmmvae (its defaults, data, seeds and epoch cap) with "
        "`variant='shared'` (VaDE-style shared q(z|x), one decoder pass) or "
        "`variant='dirichlet'` (the seed model of Kolb & Vingron 2022: Dirichlet prior on the "
        "mixture weights, w-network emitting the components). The last column compares each "
        "variant with the default (*gmmvae wins*: the default variant is better). Rows with "
        f"`--methods gmmvae {' '.join(VARIANT_METHODS)}`; not in the summary."
        + (" Kang rows carry labels from Leiden on PCA." if kang else ""),
        "",
        table(rows, proto),
        "",
    ]


def _failures(frame: pd.DataFrame) -> list[str]:
    failed = frame[frame["error"].notna()]
    if failed.empty:
        return []
    lines = ["Failed units (error rows; rerun with `--retry-errors`):", ""]
    for r in failed.itertuples():
        lines.append(f"- {r.dataset} {r.task or ''} {r.label} seed {r.seed}: {r.error}")
    return [*lines, ""]


# --------------------------------------------------------------------------------- summary
OLDER = " †"  # marks summary values from rows made by older code


def _summary_table(frame: pd.DataFrame, proto, peers: list[str]) -> tuple[list[str], dict]:
    """Lines of one summary table and the count of each verdict in it."""
    head, lower = proto.HEADLINE, proto.HEADLINE in proto.LOWER_IS_BETTER
    names = [NAMES[p] for p in peers]
    lines = [
        "| data | task | gmmvae | " + " | ".join(names) + " |",
        "|" + "---|" * (3 + len(names)),
    ]
    tally: dict[str, int] = {}
    for (ds, task), part in frame.groupby(["dataset", "task"], sort=False):
        mine = part[part["label"] == NAMES["gmmvae"]]
        ours, our_mark = stats(mine[head]), OLDER if mine["stale"].any() else ""
        cells = [ds, task or "–", fmt(*ours) + our_mark]
        for name in names:
            group = part[part["label"] == name]
            theirs, mark = stats(group[head]), OLDER if group["stale"].any() else ""
            if not (theirs[2] and ours[2]):
                cells.append(fmt(*theirs) + mark)
                continue
            verdict = call(ours, theirs, lower_is_better=lower)
            no_call = verdict.startswith("no call")
            counted = verdict + (OLDER if (our_mark or mark) and not no_call else "")
            tally[counted] = tally.get(counted, 0) + 1
            cells.append(fmt(*theirs) + mark if no_call else f"{fmt(*theirs)}{mark} · {verdict}")
        lines.append("| " + " | ".join(cells) + " |")
    return _drop_constant(lines, {"task": "–"}), tally


def summary(*, quick: bool = False) -> str:
    """One screen: gmmvae at its defaults vs each peer at its defaults, per protocol."""
    text = [
        "## Summary: gmmvae at its defaults against each peer at its defaults",
        "",
        "Mean ± sd over seeds of each protocol's headline metric (the tables below have the "
        "rest). Each peer cell says how gmmvae compares: *tie* when the difference is within "
        "one sd (the larger of the two), else *gmmvae wins* or *gmmvae loses*. A value marked "
        f"{OLDER.strip()} comes (in part) from rows whose code has changed since they were made "
        "(the tables below mark them [stale] and say at which commit): the newest row per "
        "seed is used until a rerun replaces it, and its verdicts are counted apart. "
        "Capped-epoch rows and gmmvae latent + Leiden are left out here.",
    ]
    if quick:
        text.insert(2, "**QUICK smoke rows: tiny subsamples and 3 epochs; not results.**\n")
    total: dict[str, int] = {}
    for protocol in ALL_PROTOCOLS:
        proto = module(protocol)
        frame = _newest_defaults(load(protocol, quick=quick, include_stale=True))
        if hasattr(proto, "summary"):  # a summary table of its own (perturbation)
            lines, tally = proto.summary(frame)
            text += lines
            total.update({k: total.get(k, 0) + v for k, v in tally.items()})
            continue
        if not frame.empty:
            frame = frame[frame["error"].isna()]
            if getattr(proto, "SUMMARY_TASKS", None) is not None:  # synthetic: pooled only
                frame = frame[frame["task"].isin(proto.SUMMARY_TASKS)]
        summarised = getattr(proto, "SUMMARY_PEERS", proto.METHODS)  # speed: none
        peers = [m for m in summarised if not m.startswith("gmmvae")]
        for title, part in _summary_parts(protocol, frame):
            if part.empty:
                continue
            lines, tally = _summary_table(_order(part, proto), proto, peers)
            metric = METRIC_NAMES.get(proto.HEADLINE, proto.HEADLINE)
            text += ["", f"**{proto.TITLE}: {metric}{title}**", "", *lines]
            for k, v in tally.items():
                total[k] = total.get(k, 0) + v
    if not total:
        return "\n".join([*text, "", "(no current rows yet)"])
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(total.items()))
    return "\n".join([*text, "", f"All comparisons above: {counts}.", "", *freshness(quick)])


def freshness(quick: bool = False) -> list[str]:
    """Per protocol: rows at the current code, rows whose code changed since, and the hours
    their own ``seconds`` add up to (what a rerun of the stale ones costs, on their machine)."""
    lines = [
        "**Freshness of the rows** (newest row per key; `python -m benchmarks PROTOCOL` reruns "
        "just the stale ones)",
        "",
        "| protocol | current | stale | stale gmmvae / peer | hours to rerun the stale |",
        "|---|---|---|---|---|",
    ]
    for protocol in ALL_PROTOCOLS:
        rows = store.Store(protocol, quick=quick).rows()
        newest = store.current_rows(rows, protocol, include_stale=True)
        if not newest:
            lines.append(f"| {protocol} | 0 | 0 | – | never run |")
            continue
        stale = [r for r in newest if r["stale"]]
        ours = sum(r.get("scope", "gmmvae") == "gmmvae" for r in stale)
        hours = sum(float(r.get("seconds") or 0.0) for r in stale) / 3600
        lines.append(
            f"| {protocol} | {len(newest) - len(stale)} | {len(stale)} | "
            f"{ours} / {len(stale) - ours} | {hours:.2f} |"
        )
    return lines


def _newest_defaults(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows at each method's defaults, stale ones included (``stale`` says which), under
    their plain names, so that the summary still compares while a table is being rerun."""
    if frame.empty:
        return frame
    frame = frame[frame["cap"] == -1].copy()
    frame["label"] = frame["label"].str.removesuffix(" [stale]")
    frame["default"] = True
    return frame


def _summary_parts(protocol: str, frame: pd.DataFrame):
    if frame.empty:
        return []
    independent = frame[frame["dataset"].isin(datasets.INDEPENDENT_TRUTH)]
    parts = [("", independent)]
    if protocol in CONDITION_PROTOCOLS:
        parts.append(
            (" — Kang (labels from Leiden on PCA)", frame[frame["dataset"] == LEIDEN_LABELS])
        )
    return parts


# --------------------------------------------------------------------------- writing files
def skeleton() -> str:
    """A fresh BENCHMARKS.md: title, how to rerun, empty marker sections."""
    blocks = "\n\n".join(f"<!-- {m} -->\n<!-- /{m} -->" for m in ("summary", *ALL_PROTOCOLS))
    return (
        "# Benchmarks\n\n"
        "gmmvae against its peers under the protocols of `../shared/DESIGN.md` §2. Every "
        "section below is rendered by `python -m benchmarks` from the rows in "
        "`benchmarks/results/<protocol>.jsonl`; each row records the commit, whether the tree "
        "was dirty, a fingerprint of the code that made it, package versions, machine, date "
        "and command. Rows whose code has changed since are shown marked [stale] with the "
        "commit that made them (`--current-only` hides them).\n\n"
        "How to rerun (from the repository root, 3 seeds by default; a rerun skips units whose "
        "rows are current and resumes a killed run):\n\n"
        "```bash\n"
        "pip install -e '.[bench]'\n"
        "python -m benchmarks clustering   # add --cap 100 for the shared-cap rows\n"
        "python -m benchmarks semi\n"
        "python -m benchmarks query\n"
        "python -m benchmarks novelty\n"
        "python -m benchmarks perturbation # needs pip install -e '.[bench,bench-scgen]'\n"
        "python -m benchmarks synthetic    # generation + the augmentation task\n"
        "python -m benchmarks integration  # batch mixing vs biology (scib-metrics)\n"
        "python -m benchmarks speed        # or: speed throughput | scaling | loader\n"
        "python -m benchmarks de           # differential expression vs known markers\n"
        "python -m benchmarks choose_k     # choosing K; add --cap 100 for capped rows\n"
        "python -m benchmarks query_batch  # reference -> query across an unseen batch\n"
        "python -m benchmarks clustering --methods gmmvae gmmvae_shared gmmvae_dirichlet\n"
        "python -m benchmarks summary      # re-renders the summary only\n"
        "python -m benchmarks clustering --quick   # smoke check, rows in results/quick/\n"
        "```\n\n"
        "Rows are refused from a tree with uncommitted changes in `src/` or `benchmarks/` "
        "unless `--allow-dirty` is given (the rows then say so). Earlier sections of the old "
        "scripts (perturbation, synthetic cells, speed, augmentation, variants) are in the git "
        "history of this file.\n\n"
        f"{blocks}\n"
    )


def write_section(marker: str, text: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``path``."""
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    doc = path.read_text() if path.exists() else skeleton()
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in doc and end in doc:
        before, rest = doc.split(start, 1)
        doc = before + block + rest.split(end, 1)[1]
    elif marker == "summary" and "<!-- " in doc:
        before, rest = doc.split("<!-- ", 1)
        doc = before + block + "\n\n<!-- " + rest
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)


def render(protocols: list[str], *, quick: bool = False, include_stale: bool = True) -> Path:
    """Render the sections of ``protocols`` and the summary; quick ones to results/quick/."""
    path = QUICK_RESULTS / "BENCHMARKS.md" if quick else BENCHMARKS_MD
    for protocol in protocols:
        write_section(protocol, section(protocol, quick=quick, include_stale=include_stale), path)
    write_section("summary", summary(quick=quick), path)
    return path
