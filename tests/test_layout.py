"""The shape of the code: no import cycles between modules, no private names imported across
modules, and the contract's keys read in one place. Walks the source with `ast` (nothing is
imported, so it runs in a second)."""

from __future__ import annotations

import ast

from helpers import ROOT

#: where each package's files are (pyproject's package-dir), plus the bench beside the project
PACKAGES = {"busi": "busi", "busi.runtime": "runtime", "busi.train": "train", "busi.export": "export", "busi.node": "node",
            "busi.serve": "serve", "busi.runtime.dicom_out": "runtime/dicom_out", "bench": "bench"}


def modules() -> dict[str, ast.Module]:
    out = {}
    for pkg, folder in PACKAGES.items():
        for f in sorted((ROOT / folder).glob("*.py")):
            name = pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"
            out[name] = ast.parse(f.read_text(), str(f))
    return out


def imports(name: str, tree: ast.Module, known: set[str]):
    """(imported module, imported name or None) for every import in the module, function-level
    ones included (a lazy import still ties two modules together)."""
    pkg = name if name in PACKAGES else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                src = f"{base}.{node.module}" if node.module else base
            else:
                src = node.module or ""
            for a in node.names:
                if f"{src}.{a.name}" in known:
                    yield f"{src}.{a.name}", None  # a module, imported by name
                else:
                    yield src, a.name


def graph():
    mods = modules()
    known = set(mods)
    edges, private = {m: set() for m in mods}, []
    for name, tree in mods.items():
        for src, what in imports(name, tree, known):
            if src in known and src != name:
                edges[name].add(src)
                if what and what.startswith("_") and not what.startswith("__"):
                    private.append(f"{name} imports {what} from {src}")
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_and_no_private_imports():
    edges, private = graph()
    assert len(edges) > 40 and edges["busi.train.fit"]  # the walk found the code
    assert cycles(edges) == []
    assert private == []


def test_the_walk_finds_a_cycle_and_a_private_import():
    """The checks can fail: a planted cycle and a planted private import are found."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    tree = ast.parse("from .fit import _helper\nfrom . import model as _m\n")
    got = list(imports("busi.train.x", tree, {"busi.train.fit", "busi.train.model"}))
    assert got == [("busi.train.fit", "_helper"), ("busi.train.model", None)]


def test_runtime_never_imports_training_code():
    edges, _ = graph()
    for m, deps in edges.items():
        if m.startswith("busi.runtime"):
            assert not [d for d in deps if not d.startswith("busi.runtime") and d != "busi"], m


#: what reads a `busi.*` metadata key: d["busi.x"], d.get("busi.x"), k.startswith("busi.")
_KEY_READS = ("get", "startswith", "pop")


def contract_key_reads(tree: ast.Module) -> list[int]:
    """Lines where a `busi.*` key of the contract is read by its raw name."""
    def is_key(node):
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("busi.")

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and is_key(node.slice):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _KEY_READS
              and node.args and is_key(node.args[0])):
            lines.append(node.lineno)
    return lines


def test_the_contract_is_read_in_one_place():
    """No `busi.*` metadata key read by its raw name outside the contract module: the rest of the
    code reads ModelInfo/SegmenterInfo (or contract.served_parameters, contract.SHA256_KEY)."""
    found = {m: lines for m, tree in modules().items() if m != "busi.runtime.contract"
             for lines in [contract_key_reads(tree)] if lines}
    assert found == {}


def test_the_key_check_finds_a_raw_read():
    tree = ast.parse('meta["busi.classes"]\nmeta.get("busi.ood")\n[k for k in meta if k.startswith("busi.")]\nlog("busi.x")\n')
    assert contract_key_reads(tree) == [1, 2, 3]


#: the results' classes: their kind is `result.kind` (records: `results.record_kind`)
_RESULT_TYPES = {"Prediction", "NeedsRoi", "Failure"}


def result_kind_dispatch(tree: ast.Module) -> list[int]:
    """Lines that tell a result's kind another way than `.kind`/`record_kind`: isinstance with
    a result class, getattr(x, "needs_roi"), `"error" in record`, record.get("needs_roi")."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            types = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            if any(isinstance(t, ast.Name) and t.id in _RESULT_TYPES for t in types):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value == "needs_roi":
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and len(node.args) == 1 and isinstance(node.args[0], ast.Constant) and node.args[0].value == "needs_roi"):
            # (with a default it reads a study summary's count, a value, not a kind)
            lines.append(node.lineno)
        elif (isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and node.left.value == "error"
              and isinstance(node.ops[0], (ast.In, ast.NotIn))):
            lines.append(node.lineno)
    return lines


def test_the_kind_of_a_result_is_told_one_way():
    """Outside the results module (and the Predictor, which makes them) no module tells a
    Prediction, a NeedsRoi and a Failure apart by type, attribute or record key."""
    found = {m: lines for m, tree in modules().items() if m not in ("busi.runtime.results", "busi.runtime.predictor")
             for lines in [result_kind_dispatch(tree)] if lines}
    assert found == {}


def test_the_kind_check_finds_each_way():
    tree = ast.parse('isinstance(r, (Prediction, NeedsRoi))\ngetattr(r, "needs_roi", False)\n"error" in d\n'
                     'd.get("needs_roi")\nisinstance(x, dict)\n')
    assert result_kind_dispatch(tree) == [1, 2, 3, 4]


def uid_builders(tree: ast.Module) -> list[int]:
    """Lines that build a DICOM UID: pydicom's generate_uid imported or called."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "generate_uid" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "generate_uid":
            lines.append(node.lineno)
    return lines


def test_uids_are_built_in_the_dicom_identity_module_only():
    """busi's objects get their UIDs from one place (dicom_identity.uid: the deterministic
    derivation busi-infer and busi-node share); the phantom generator makes its own test data."""
    found = {m: lines for m, tree in modules().items() if m not in ("busi.runtime.dicom_identity", "busi.train.phantoms")
             for lines in [uid_builders(tree)] if lines}
    assert found == {}
    assert uid_builders(ast.parse("from pydicom.uid import generate_uid\nx = pydicom.uid.generate_uid()\n")) == [1, 2]


def test_ruff_finds_nothing():
    """The linter (pyproject's [tool.ruff]: pyflakes, isort, bugbear) is clean on the whole tree."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed (make install installs the dev extra)"
    r = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", str(ROOT)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]

