"""The benchmark rows' bookkeeping: which code changes make a stored row stale."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from benchmarks import store

SOURCE = textwrap.dedent(
    '''
    """Module docstring."""
    DESCRIPTION = "what the table says"
    TASK_DESCRIPTION: str = "more of it"
    N = 3  # a comment


    def f(x):
        """Function docstring."""
        return x * N


    class C:
        """Class docstring."""

        def g(self):
            """Only a docstring."""
    '''
).encode()


def test_prose_does_not_count_but_code_does():
    base = store.without_prose("m.py", SOURCE)
    reworded = (
        SOURCE.replace(b"Module docstring", b"Other words")
        .replace(b"what the table says", b"new wording")
        .replace(b"# a comment", b"# another")
        .replace(b"Only a docstring.", b"Still only prose.")
    )
    assert store.without_prose("m.py", reworded) == base
    assert store.without_prose("m.py", SOURCE.replace(b"x * N", b"x + N")) != base
    assert store.without_prose("m.py", SOURCE.replace(b"N = 3", b"N = 4")) != base
    # a string that is not a docstring is code
    code_string = SOURCE.replace(b"return x * N", b'"not a docstring"\n    return x * N')
    assert store.without_prose("m.py", code_string) != base
    # other files count byte for byte
    assert store.without_prose("m.txt", b"a") == b"a"


@pytest.fixture
def fingerprints(monkeypatch):
    monkeypatch.setattr(store, "fingerprint", lambda protocol, scope: "bytes-now")
    monkeypatch.setattr(store, "code_fingerprint", lambda protocol, scope: "code-now")


def test_a_row_is_current_when_its_bytes_or_its_code_match(fingerprints):
    row = {"scope": "peer", "fingerprint": "bytes-now", "dirty": True}
    assert store.is_current(row, "clustering")
    assert store.is_current({**row, "fingerprint": "old", "code_fingerprint": "code-now"}, "x")
    assert not store.is_current({**row, "fingerprint": "old", "code_fingerprint": "old"}, "x")
    assert not store.is_current({"scope": "peer"}, "clustering")  # made before provenance
    # a dirty row without a code fingerprint cannot be traced to a commit
    assert not store.is_current({**row, "fingerprint": "old"}, "clustering")


def test_old_rows_get_their_code_fingerprint_from_git_only_if_their_bytes_match():
    head = store._git("rev-parse", "--short", "HEAD")
    if head is None:
        pytest.skip("not a git checkout")
    assert store.code_fingerprint_at(head, "clustering", "peer", "not-the-bytes") is None
    if store.code_state()["dirty"]:
        pytest.skip("src/ or benchmarks/ differ from HEAD, so HEAD's files are not these")
    stored = store.fingerprint("clustering", "peer")
    assert store.code_fingerprint_at(head, "clustering", "peer", stored) == (
        store.code_fingerprint("clustering", "peer")
    )


def test_only_modules_an_import_reaches_count_for_gmmvae_rows():
    contents = {
        "benchmarks/protocols/p.py": b"import gmmvae\nfrom gmmvae.extra import thing\n",
        "gmmvae/__init__.py": b"from gmmvae.model import Model\n",
        "gmmvae/model.py": b"def f():\n    from . import lazy\n",
        "gmmvae/lazy.py": b"from .sub.leaf import x\n",
        "gmmvae/sub/__init__.py": b"",
        "gmmvae/sub/leaf.py": b"x = 1\n",
        "gmmvae/extra.py": b"thing = 1\n",
        "gmmvae/cli.py": b"import gmmvae.model\n",  # imports others, imported by none
        "gmmvae/py.typed": b"",
    }
    assert set(contents) - store.reachable(contents) == {"gmmvae/cli.py"}
    base = store._code_digest(contents, "gmmvae")
    assert store._code_digest({**contents, "gmmvae/cli.py": b"x = 2\n"}, "gmmvae") == base
    assert store._code_digest({**contents, "gmmvae/lazy.py": b"x = 2\n"}, "gmmvae") != base
    # peer rows name their modules explicitly; nothing is left out of theirs
    assert store._code_digest({**contents, "gmmvae/cli.py": b"x = 2\n"}, "peer") != (
        store._code_digest(contents, "peer")
    )
    # a file that does not parse makes everything count
    broken = {**contents, "gmmvae/model.py": b"def (:\n"}
    assert store.reachable(broken) == set(broken)


def test_the_benchmarks_never_load_the_cli_or_the_demo():
    files = store._code_files("clustering", "gmmvae")
    left_out = set(files) - store.reachable({n: p.read_bytes() for n, p in files.items()})
    assert {"gmmvae/cli.py", "gmmvae/demo.py"} <= left_out
    assert "gmmvae/model.py" not in left_out and "gmmvae/training.py" not in left_out


def test_rows_with_module_lists_depend_on_those_modules_only(tmp_path, monkeypatch):
    package = tmp_path / "gmmvae"
    package.mkdir()
    for name, body in {"__init__.py": "", "model.py": "x = 1\n", "de.py": "y = 1\n"}.items():
        (package / name).write_text(body)
    monkeypatch.setattr(store, "package_dir", lambda: package)
    monkeypatch.setattr(store, "bench_files", lambda protocol: [])
    fingerprint = store.module_fingerprint.__wrapped__
    loaded = ("gmmvae/__init__.py", "gmmvae/model.py")
    before = fingerprint("clustering", loaded)
    (package / "de.py").write_text("y = 2\n")  # never loaded by these rows
    assert fingerprint("clustering", loaded) == before
    (package / "model.py").write_text('"""Now documented."""\nx = 1\n')  # prose only
    assert fingerprint("clustering", loaded) == before
    (package / "model.py").write_text("x = 2\n")
    assert fingerprint("clustering", loaded) != before
    assert fingerprint("clustering", (*loaded, "gmmvae/gone.py")) is None


def test_a_module_list_decides_whether_a_new_row_is_current(fingerprints, monkeypatch):
    monkeypatch.setattr(store, "module_fingerprint", lambda protocol, modules: "modules-now")
    row = {"scope": "gmmvae", "fingerprint": "old", "code_fingerprint": "code-now"}
    row |= {"modules": ["gmmvae/model.py"], "dirty": False, "commit": "abc"}
    assert store.is_current({**row, "module_fingerprint": "modules-now"}, "clustering")
    # the whole-package code fingerprint no longer decides for such a row
    assert not store.is_current({**row, "module_fingerprint": "modules-then"}, "clustering")


def test_a_change_to_plotting_alone_leaves_a_row_current(tmp_path, monkeypatch):
    package = tmp_path / "gmmvae"
    package.mkdir()
    then = {"gmmvae/model.py": b"x = 1\n", "gmmvae/plotting_de.py": b"def plot(): pass\n"}
    for name, body in then.items():
        (tmp_path / name).write_bytes(body)
    monkeypatch.setattr(store, "package_dir", lambda: package)
    monkeypatch.setattr(store, "bench_files", lambda protocol: [])
    # git at the row's commit holds the files as they were when the row was written
    monkeypatch.setattr(store, "_blobs_at", lambda commit, paths: [then[p[4:]] for p in paths])
    modules = tuple(then)
    row = {"scope": "gmmvae", "fingerprint": "old", "modules": list(modules)}
    row |= {"module_fingerprint": store._digest(then, prose=False), "dirty": False, "commit": "a"}
    assert store.is_current(row, "perturbation")
    (package / "plotting_de.py").write_text("def plot(): return 1\n")  # figures only
    store.module_fingerprint.cache_clear()
    assert store.is_current(row, "perturbation")
    assert not store.is_current({**row, "dirty": True}, "perturbation")  # no commit to read
    (package / "model.py").write_text("x = 2\n")  # the scores' code
    store.module_fingerprint.cache_clear()
    assert not store.is_current(row, "perturbation")


def test_loaded_modules_are_package_files_and_name_the_model():
    names = store.loaded_modules()
    assert {"gmmvae/__init__.py", "gmmvae/model.py", "gmmvae/py.typed"} <= set(names)
    assert all(name.startswith("gmmvae/") for name in names)
    assert (store.package_dir().parent / names[0]).is_file()


def test_importing_the_package_leaves_the_analysis_modules_unloaded():
    probe = (
        "import sys, gmmvae\n"
        "loaded = {m for m in sys.modules if m.startswith('gmmvae.')}\n"
        "print(sorted(loaded & {'gmmvae.de', 'gmmvae.perturbation', 'gmmvae.analysis',"
        " 'gmmvae.plotting', 'gmmvae.query', 'gmmvae.likelihood', 'gmmvae.selection',"
        " 'gmmvae.calibration', 'gmmvae.generation', 'gmmvae.response'}))\n"
        "assert gmmvae.GMMVAE.differential_expression.__name__ == 'differential_expression'\n"
        "assert 'gmmvae.de' in sys.modules and gmmvae.pl.__name__ == 'gmmvae.plotting'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
