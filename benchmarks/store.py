"""Result rows: one append-only JSON-lines file per protocol, each row saying what made it.

A row's key is (protocol, dataset, task, method, options, seed). Its ``fingerprint`` is the
sha256 of the code that can change its result:

- gmmvae rows (``scope="gmmvae"``): every file of the imported ``gmmvae`` package plus the
  benchmark code the protocol runs (:func:`bench_files`);
- peer rows (``scope="peer"``): the benchmark code plus the few gmmvae modules the peers are
  scored or clustered with (Leiden with K, metrics, gene selection, label masking; see
  :data:`SHARED_MODULES`), so that a change to the model does not make scVI rerun, but a
  change to the shared Leiden or the metrics does.

Rows also carry a ``code_fingerprint``: the same files with their prose left out (each
Python file as its syntax tree without docstrings and without the ``DESCRIPTION`` texts that
tables print; comments and formatting are not in a syntax tree), so that editing a docstring,
a comment or a table's description leaves rows current. Rows stored before it existed get
theirs from git: the files at the row's commit, accepted only when their bytes give the
row's ``fingerprint`` back (:func:`code_fingerprint_at`).

For gmmvae rows the code fingerprint also leaves out the package's modules that no import
statement reaches from ``gmmvae/__init__.py`` and the benchmark files (:func:`reachable`;
e.g. ``gmmvae/cli.py`` and ``gmmvae/demo.py``): a benchmark process never loads them, so
they cannot change its rows. Imports inside functions count. A row whose stored code
fingerprint was made under an earlier definition is compared through git the same way.

Rows made since per-row module lists also carry ``modules``: the package files the process
had loaded when the row was written (Python modules in ``sys.modules``, plus every non-Python
file of the package), and ``module_fingerprint``, the code fingerprint of those files and the
benchmark files. Such a row stays current while those files' code is unchanged, whatever
happens to modules it never loaded: the package imports its analysis modules (DE,
perturbation, generation, query mapping, choosing K, plotting) on first use, so a change to
``gmmvae/de.py`` stales the DE rows and not the clustering ones. Not for protocols that
train in a subprocess (:data:`SUBPROCESS_PROTOCOLS`), whose loaded modules this process
cannot see.

A unit is skipped only when a row with the same key and a current fingerprint (any kind)
exists; tables use, per key, the newest such row (:func:`current_rows`).
"""

from __future__ import annotations

import ast
import datetime
import functools
import hashlib
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from benchmarks import QUICK_RESULTS, REPO, RESULTS, ROOT

Scope = Literal["gmmvae", "peer"]
KEY_FIELDS = ("protocol", "dataset", "task", "method", "options", "seed")
PACKAGES = (
    "gmmvae",
    "torch",
    "scvi-tools",
    "celltypist",
    "scanpy",
    "anndata",
    "scikit-learn",
    "lightning",
    "pertpy",
    "jax",
    "scib-metrics",
    "harmonypy",
    # numerics below the models: a new environment with other versions of these moved the
    # mixture assignment of one zheng_coarse seed (ARI 0.575 -> 0.333, same training code)
    "numpy",
    "scipy",
    "pandas",
    "igraph",
    "leidenalg",
)
# Benchmark code that can change a result (store.py, report.py and __main__.py cannot).
BENCH_CODE = ("datasets.py", "methods.py", "protocols/__init__.py")
PROTOCOL_FILES = {
    "clustering": ("protocols/clustering.py",),
    "semi": ("protocols/semi_supervised.py",),
    "query": ("protocols/query.py",),
    "novelty": ("protocols/novelty.py",),
    "perturbation": ("protocols/perturbation.py", "perturbation_methods.py"),
    "synthetic": ("protocols/synthetic.py", "protocols/augmentation.py"),
    "integration": ("protocols/integration.py",),
    "de": ("protocols/de.py",),
    "choose_k": ("protocols/choose_k.py",),
    "query_batch": ("protocols/query_batch.py",),
    "speed": ("protocols/speed.py", "protocols/speed_rows.py", "annbatch_worker.py"),
}
# Protocols whose gmmvae rows are made in another process: their rows keep the whole-package
# fingerprint, since this process does not know which modules that one loaded.
SUBPROCESS_PROTOCOLS = ("speed",)
# gmmvae modules that peer rows also depend on.
SHARED_MODULES = (
    "gmmvae.clustering",
    "gmmvae.metrics",
    "gmmvae.evaluation",  # two-sample tests and markers that score peers' synthetic cells
    "gmmvae.pp",
    "gmmvae.datasets",
)


def bench_files(protocol: str) -> list[Path]:
    """The benchmark files whose contents can change a row of ``protocol``."""
    return [ROOT / name for name in (*BENCH_CODE, *PROTOCOL_FILES[protocol])]


def _module_files(name: str) -> list[Path]:
    """The source file of a module, or every file of a package."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return []
    if spec.submodule_search_locations:
        return _tree(Path(spec.origin).parent)
    return [Path(spec.origin)]


def _tree(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def package_dir() -> Path:
    """Folder of the imported gmmvae package (the code that is benchmarked)."""
    spec = importlib.util.find_spec("gmmvae")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("gmmvae is not importable; pip install -e '.[bench]'.")
    return Path(spec.origin).parent


def _code_files(protocol: str, scope: Scope) -> dict[str, Path]:
    """The files behind a row of ``protocol`` by ``scope``, by relative name."""
    files = bench_files(protocol)
    if scope == "gmmvae":
        files += _tree(package_dir())
    else:
        files += [f for name in SHARED_MODULES for f in _module_files(name)]
    return {_relative(path): path for path in files}


def _digest(contents: dict[str, bytes], *, prose: bool) -> str:
    digest = hashlib.sha256()
    for name in sorted(contents):
        body = contents[name] if prose else without_prose(name, contents[name])
        digest.update(name.encode() + b"\0" + body + b"\0")
    return digest.hexdigest()


@functools.cache
def fingerprint(protocol: str, scope: Scope) -> str:
    """sha256 of the contents (and relative names) of the code behind a row."""
    files = _code_files(protocol, scope)
    return _digest({name: path.read_bytes() for name, path in files.items()}, prose=True)


@functools.cache
def code_fingerprint(protocol: str, scope: Scope) -> str:
    """:func:`fingerprint` of the same files with their prose left out (:func:`without_prose`)
    and, for gmmvae rows, without the modules no import reaches (:func:`reachable`)."""
    files = _code_files(protocol, scope)
    return _code_digest({name: path.read_bytes() for name, path in files.items()}, scope)


def loaded_modules() -> list[str]:
    """Relative names (``gmmvae/...``) of the package's Python files this process has loaded,
    and of every non-Python file of the package (which any of them may read)."""
    base = package_dir()
    names = {_relative(p) for p in _tree(base) if p.suffix != ".py"}
    for loaded in list(sys.modules.values()):
        file = getattr(loaded, "__file__", None)
        if file and Path(file).suffix == ".py" and Path(file).is_relative_to(base):
            names.add(_relative(Path(file)))
    return sorted(names)


#: Package files that draw figures and compute no score. A protocol that plots records them
#: among its rows' modules (they are loaded by then), yet a change to them cannot move a
#: row's scores: :func:`is_current` lets such a change pass when the row's commit shows that
#: nothing else changed.
PRESENTATION_MODULES = frozenset(
    {"gmmvae/plotting.py", "gmmvae/plotting_de.py", "gmmvae/_palettes.py"}
)


@functools.cache
def module_fingerprint(protocol: str, modules: tuple[str, ...]) -> str | None:
    """Code fingerprint (prose left out) of the benchmark files of ``protocol`` and the package
    files named in ``modules``; None when one of those files no longer exists."""
    contents = _module_contents(protocol, modules)
    return None if contents is None else _digest(contents, prose=False)


def _module_contents(protocol: str, modules) -> dict[str, bytes] | None:
    """Relative name -> bytes of the benchmark files of ``protocol`` and the package files
    named in ``modules``, as they are now; None when one of those files no longer exists."""
    contents = {_relative(path): path.read_bytes() for path in bench_files(protocol)}
    base = package_dir().parent
    for name in modules:
        path = base / name
        if not path.is_file():
            return None
        contents[name] = path.read_bytes()
    return contents


def _code_digest(contents: dict[str, bytes], scope: Scope) -> str:
    if scope == "gmmvae":
        kept = reachable(contents)
        contents = {name: body for name, body in contents.items() if name in kept}
    return _digest(contents, prose=False)


def reachable(contents: dict[str, bytes]) -> set[str]:
    """Names of the files that a process running the benchmark files can load: the
    ``benchmarks/`` files, every non-Python file, and the ``gmmvae/`` modules reached by
    import statements (anywhere in a file, so lazy imports count) from
    ``gmmvae/__init__.py`` and the benchmark files, with their parent packages.

    Conservative: a file that does not parse makes every file count.
    """
    modules = {_module_name(name): name for name in contents if name.startswith("gmmvae/")}
    modules.pop(None, None)
    kept = {name for name in contents if not name.startswith("gmmvae/") or not name.endswith(".py")}
    queue = [name for name in kept if name.endswith(".py")] + ["gmmvae/__init__.py"]
    while queue:
        name = queue.pop()
        try:
            tree = ast.parse(contents.get(name, b""))
        except SyntaxError:
            return set(contents)
        for module in _imported(tree, name):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):
                found = modules.get(".".join(parts[:depth]))
                if found is not None and found not in kept:
                    kept.add(found)
                    queue.append(found)
    return kept


def _module_name(name: str) -> str | None:
    """``gmmvae/a/b.py`` -> ``gmmvae.a.b``; ``gmmvae/a/__init__.py`` -> ``gmmvae.a``."""
    if not name.endswith(".py"):
        return None
    parts = name.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imported(tree: ast.AST, name: str) -> list[str]:
    """Dotted names the import statements of file ``name`` may load (``from a import b``
    gives ``a`` and ``a.b``, since b may be a submodule); relative imports resolved."""
    package = name.removesuffix(".py").split("/")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            anchor = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*anchor, *([node.module] if node.module else [])])
            out.append(base)
            out += [f"{base}.{alias.name}" for alias in node.names]
    return out


def without_prose(name: str, source: bytes) -> bytes:
    """A Python file's syntax tree without docstrings and ``*DESCRIPTION`` assignments, as
    text; other files (and Python that does not parse) unchanged.

    Neither can change a result: docstrings are only read by help(), and the descriptions
    only by the tables.
    """
    if not name.endswith(".py"):
        return source
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        kept = [
            stmt
            for position, stmt in enumerate(body)
            if not (position == 0 and _is_docstring(node, stmt)) and not _is_description(stmt)
        ]
        node.body = kept or [ast.Pass()]
    return ast.dump(tree).encode()


def _is_docstring(node: ast.AST, stmt: ast.stmt) -> bool:
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return (
        isinstance(node, documented)
        and isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _is_description(stmt: ast.stmt) -> bool:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else []
    if isinstance(stmt, ast.AnnAssign):
        targets = [stmt.target]
    return bool(targets) and all(
        isinstance(t, ast.Name) and t.id.endswith("DESCRIPTION") for t in targets
    )


@functools.cache
def code_fingerprint_at(commit: str, protocol: str, scope: Scope, stored: str) -> str | None:
    """:func:`code_fingerprint` of the files as they were at ``commit``, or None when those
    files' bytes do not give the ``stored`` fingerprint back (or git cannot tell)."""
    contents = _files_at(commit, protocol, scope)
    if contents is None or _digest(contents, prose=True) != stored:
        return None
    return _code_digest(contents, scope)


def _files_at(commit: str, protocol: str, scope: Scope) -> dict[str, bytes] | None:
    """Relative name -> bytes of the files behind a row, read from git at ``commit``."""
    names = [f"benchmarks/{name}" for name in (*BENCH_CODE, *PROTOCOL_FILES[protocol])]
    package = _git("ls-tree", "-r", "--name-only", commit, "--", "src/gmmvae")
    if package is None:
        return None
    in_package = [line.removeprefix("src/") for line in package.splitlines()]
    if scope == "gmmvae":
        names += in_package
    else:
        for module in SHARED_MODULES:
            stem = module.replace(".", "/")
            names += [n for n in in_package if n == f"{stem}.py" or n.startswith(f"{stem}/")]
    paths = [name if name.startswith("benchmarks/") else f"src/{name}" for name in names]
    blobs = _blobs_at(commit, paths)
    if blobs is None:
        return None
    contents = {}
    for name, blob in zip(names, blobs, strict=True):
        if blob is None:
            if name.startswith("benchmarks/"):
                continue  # a protocol file added later; the row's fingerprint decides
            return None
        contents[name] = blob
    return contents


def _blobs_at(commit: str, paths: list[str]) -> list[bytes | None] | None:
    """Contents of ``paths`` at ``commit`` (None for a path not there), read by one
    ``git cat-file --batch``; None if git fails."""
    query = "".join(f"{commit}:{path}\n" for path in paths).encode()
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "cat-file", "--batch"],
            cwd=REPO,
            input=query,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    blobs: list[bytes | None] = []
    position = 0
    for _ in paths:
        end = out.index(b"\n", position)
        header = out[position:end].split()
        position = end + 1
        if len(header) != 3:  # "<name> missing"
            blobs.append(None)
            continue
        size = int(header[2])
        blobs.append(out[position : position + size])
        position += size + 1
    return blobs


def is_current(row: dict[str, Any], protocol: str) -> bool:
    """Whether the code behind ``row`` is the code here now, prose aside."""
    scope = row.get("scope", "gmmvae")
    stored = row.get("fingerprint")
    if stored is None:
        return False
    if stored == fingerprint(protocol, scope):
        return True
    if row.get("modules") is not None and row.get("module_fingerprint"):
        modules = tuple(row["modules"])
        if module_fingerprint(protocol, modules) == row["module_fingerprint"]:
            return True
        return _changed_only_presentation(row, protocol, modules)
    now = code_fingerprint(protocol, scope)
    if row.get("code_fingerprint") == now:
        return True
    # Stored under an earlier definition (or not at all): recompute from the row's commit.
    if row.get("dirty", True) or not row.get("commit"):
        return False
    return code_fingerprint_at(row["commit"], protocol, scope, stored) == now


def _changed_only_presentation(row: dict[str, Any], protocol: str, modules) -> bool:
    """Whether the code behind ``row`` differs from the code now only in
    :data:`PRESENTATION_MODULES`: read from git at the row's (clean) commit, checked against
    the row's ``module_fingerprint``, and compared file by file without them."""
    if row.get("dirty", True) or not row.get("commit"):
        return False
    if not PRESENTATION_MODULES.intersection(modules):
        return False
    now = _module_contents(protocol, modules)
    if now is None:
        return False
    names = list(now)
    paths = [n if n.startswith("benchmarks/") else f"src/{n}" for n in names]
    blobs = _blobs_at(row["commit"], paths)
    if blobs is None or any(blob is None for blob in blobs):
        return False
    then = dict(zip(names, blobs, strict=True))
    if _digest(then, prose=False) != row["module_fingerprint"]:
        return False  # the commit does not hold the code the row recorded

    def scored(contents: dict[str, bytes]) -> str:
        kept = {k: v for k, v in contents.items() if k not in PRESENTATION_MODULES}
        return _digest(kept, prose=False)

    return scored(then) == scored(now)


def _relative(path: Path) -> str:
    for base in (package_dir().parent, ROOT.parent):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


def _git(*args: str) -> str | None:
    """Output of a read-only git command in the repository; None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


@functools.cache
def code_state() -> dict[str, Any]:
    """Commit (short hash) and whether src/ or benchmarks/ differ from it.

    ``dirty`` is also True when the imported gmmvae is not this checkout's ``src/gmmvae``
    (then the commit does not describe the code that ran; ``gmmvae_path`` says where it was).
    """
    status = _git(
        "status",
        "--porcelain",
        "--",
        "src",
        "benchmarks",
        ":(exclude)benchmarks/results",
        ":(exclude)benchmarks/figures",
    )
    state: dict[str, Any] = {
        "commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": status is None or bool(status),
    }
    if package_dir() != REPO / "src" / "gmmvae":
        state.update(dirty=True, gmmvae_path=str(package_dir()))
    return state


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that can change a result."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    """CPU count, torch threads and the accelerator of this process."""
    import torch

    accelerator = "cpu"
    if torch.cuda.is_available():
        accelerator = f"cuda: {torch.cuda.get_device_name(0)}"
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "accelerator": accelerator,
        "node": platform.node(),
    }


def command_line() -> str:
    """The command that runs this process, as a user would type it."""
    return shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]])


def provenance(protocol: str, scope: Scope) -> dict[str, Any]:
    """Every provenance field of a row made now by code of ``scope``; for gmmvae rows of
    in-process protocols, also the package files loaded so far (:func:`loaded_modules`)."""
    loaded: dict[str, Any] = {}
    if scope == "gmmvae" and protocol not in SUBPROCESS_PROTOCOLS:
        modules = loaded_modules()
        loaded = {
            "modules": modules,
            "module_fingerprint": module_fingerprint(protocol, tuple(modules)),
        }
    return {
        **code_state(),
        "fingerprint": fingerprint(protocol, scope),
        "code_fingerprint": code_fingerprint(protocol, scope),
        **loaded,
        "scope": scope,
        "versions": versions(),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
    }


def row_key(row: dict[str, Any]) -> tuple:
    """Hashable key of a row; options compare as canonical JSON."""
    return tuple(
        json.dumps(row.get(f), sort_keys=True) if f == "options" else row.get(f) for f in KEY_FIELDS
    )


class Store:
    """The append-only rows of one protocol: ``results/<protocol>.jsonl``, or under
    ``results/quick/`` for ``--quick`` smoke runs (git-ignored, never in BENCHMARKS.md)."""

    def __init__(self, protocol: str, *, quick: bool = False) -> None:
        self.protocol = protocol
        self.quick = quick
        self.path = (QUICK_RESULTS if quick else RESULTS) / f"{protocol}.jsonl"

    def rows(self) -> list[dict[str, Any]]:
        """Rows in the order written; a line cut short by a killed process is skipped."""
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def has(self, key: dict[str, Any], fingerprint: str, *, retry_errors: bool) -> bool:
        """Whether a row with this key exists whose code is current: ``fingerprint`` (the
        current one, from the runner) or :func:`is_current`. Error rows count unless
        ``retry_errors``."""
        wanted = row_key(key)
        return any(
            row_key(r) == wanted
            and not (retry_errors and "error" in r)
            and (r.get("fingerprint") == fingerprint or is_current(r, self.protocol))
            for r in self.rows()
        )

    def append(self, row: dict[str, Any]) -> None:
        """Append one row and flush it to disk (a killed run keeps every finished row)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=_jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def current_rows(
    rows: list[dict[str, Any]], protocol: str, *, include_stale: bool = False
) -> list[dict[str, Any]]:
    """Per key, the newest row whose code is current for its scope (:func:`is_current`).

    With ``include_stale``, keys that have no current row keep their newest stale row, with
    ``stale=True``. Rows without a fingerprint (made before provenance) are stale.
    """
    current: dict[tuple, dict[str, Any]] = {}
    stale: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        (current if is_current(row, protocol) else stale)[row_key(row)] = row
    out = [{**r, "stale": False} for r in current.values()]
    if include_stale:
        out += [{**r, "stale": True} for k, r in stale.items() if k not in current]
    return out
