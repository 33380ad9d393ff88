"""README.md and docs/ stay true to the code (cheap, no model): every relative link reaches a
file and a heading; the contract version, the number of commands and every `--option` they
name are the code's; the generated results blocks name the file they live in; the README's
table of record kinds is the schema's. The checks run on planted stale lines too, so that they
are seen to fail."""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path

import pytest
from helpers import ROOT

from busi.runtime.contract import CONTRACT_VERSION

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMANDS = tuple(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
#: options of other programs that the docs show beside busi's (tritonserver, docker)
FOREIGN_OPTIONS = {"--model-repository", "--model-config-name", "--strict-model-config", "--gpus"}
NUMBERS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---- links ------------------------------------------------------------------------------------

def without_code(text: str) -> str:
    """The text with fenced code blocks blanked (line numbers kept)."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            out.append("")
        else:
            out.append("" if fence else line)
    return "\n".join(out)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, -1 -2 for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for line in without_code(path.read_text()).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    text = re.sub(r"`[^`\n]*`", "", without_code(path.read_text()))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here (no network)
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            problems.append(f"{rel(path)}: link {target}: {file} does not exist")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            problems.append(f"{rel(path)}: link {target}: no heading #{anchor} in {rel(dest)}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_relative_link_reaches_a_file_and_a_heading(doc):
    assert broken_links(doc) == []


def test_the_readme_links_every_page_in_docs():
    readme = (ROOT / "README.md").read_text()
    assert [rel(d) for d in DOCS[1:] if f"({rel(d)})" not in readme] == []


# ---- what the code has ------------------------------------------------------------------------

@cache
def command_options() -> dict[str, set[str]]:
    """{"busi-infer": {"--model", "-m", ...}, "busi-train fit": {...}, "busi-train": {...}} from the
    typer apps' click commands."""
    import importlib

    import typer

    def opts(cmd) -> set[str]:
        return {"--help"} | {o for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}

    out = {}
    for name in COMMANDS:
        module, _, _ = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][name].partition(":")
        cmd = typer.main.get_command(importlib.import_module(module).app)
        out[name] = opts(cmd)
        for sub, c in getattr(cmd, "commands", {}).items():
            out[f"{name} {sub}"] = opts(c)
    return out


SHELL_STOP = re.compile(r"^(?:\||\|\||&&|;|>|>>|2>|<|#.*)$")


def command_lines(text: str) -> list[str]:
    """Every fenced bash block line (continuations joined) and every inline code span."""
    out, fence, buf = [], None, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:]
            continue
        if fence is not None and fence in ("", "bash", "sh", "console"):
            buf += line.rstrip("\\") + " "
            if not line.endswith("\\"):
                out.append(buf)
                buf = ""
    out += re.findall(r"`([^`\n]+)`", without_code(text))
    return out


def options_named(line: str) -> list[tuple[str, str]]:
    """(command, option) for each option a busi command line names: `busi-train fit --seed 1` ->
    ("busi-train fit", "--seed"); `python -m busi infer ...` counts as busi-infer."""
    line = re.sub(r"python -m busi (infer|train|export|node|serve)\b", r"busi-\1", line)
    found = []
    for m in re.finditer(r"(?<![\w-])(busi-(?:infer|train|export|node|serve))(?![\w-])", line):
        command, tokens = m.group(1), line[m.end():].split()
        sub = None
        for tok in tokens:
            if SHELL_STOP.match(tok) or re.match(r"busi-(infer|train|export|node|serve)$", tok):
                break
            word = tok.strip("[](),.;:'\"")
            if command == "busi-train" and sub is None and f"busi-train {word}" in command_options():
                sub = word
                continue
            for opt in re.findall(r"(?:^|/)(--?[A-Za-z][\w-]*)", word):
                found.append((f"{command} {sub}" if sub else command, opt))
    return found


def unknown_options(text: str) -> list[str]:
    known = command_options()
    every = set().union(*known.values())
    problems = []
    for line in command_lines(text):
        for command, opt in options_named(line):
            # a busi-train line without its subcommand: any of busi-train's options
            allowed = known[command] if command != "busi-train" else set().union(
                *(v for k, v in known.items() if k.startswith("busi-train")))
            if opt not in allowed:
                problems.append(f"{command} has no option {opt}: `{line.strip()[:100]}`")
        m = re.fullmatch(r"\s*(--[A-Za-z][\w-]*)(?:[ =].*)?", line)  # an option on its own: `--roi`
        if m and not re.search(r"busi-|make ", line):
            for opt in re.findall(r"--[A-Za-z][\w-]*", line.split(" ")[0]):
                if opt not in every and opt not in FOREIGN_OPTIONS:
                    problems.append(f"no busi command has the option {opt}: `{line.strip()[:100]}`")
    return problems


def stale_contract(text: str) -> list[str]:
    """A named contract version must be the code's, unless the sentence speaks of older files."""
    problems = []
    flat = " ".join(text.split())
    for m in re.finditer(r"contract[ _]version`?,? \(?(?:now |is )?(\d+)|model contract (\d+)", flat):
        n = int(m.group(1) or m.group(2))
        context = flat[max(0, m.start() - 80):m.start()]
        if n != CONTRACT_VERSION and not re.search(r"before|older|earlier", context):
            problems.append(f"contract version {n} (the code is at {CONTRACT_VERSION}): ...{flat[m.start() - 40:m.end() + 10]}...")
    return problems


def stale_counts(text: str) -> list[str]:
    """'the N commands' must count the project's console scripts."""
    words = "|".join(NUMBERS)
    return [f"'{m.group(0)}' but there are {len(COMMANDS)} commands ({', '.join(COMMANDS)})"
            for m in re.finditer(rf"\b({words}|\d+) (?:busi )?commands\b", " ".join(text.split()), re.I)
            if NUMBERS.get(m.group(1).lower(), None if not m.group(1).isdigit() else int(m.group(1))) != len(COMMANDS)]


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_the_docs_name_only_what_the_code_has(doc):
    text = doc.read_text()
    assert unknown_options(text) + stale_contract(text) + stale_counts(text) == []


def test_the_checks_fail_on_planted_stale_lines():
    """Each check finds what it is for (a check that cannot fail is a defect)."""
    assert stale_contract("written with `busi.contract_version`\n(now 3); read back")
    assert stale_contract(f"busi-infer 0.1.0 (model contract {CONTRACT_VERSION + 1}, onnxruntime 1.2)")
    assert not stale_contract("A model exported before this (contract version 2 or 3) still loads")
    assert not stale_contract(f"the contract (contract version {CONTRACT_VERSION}, in the metadata)")
    assert stale_counts("the four commands print it as one line")
    assert not stale_counts(f"The {['zero', 'one', 'two', 'three', 'four', 'five', 'six'][len(COMMANDS)]} commands are")
    assert unknown_options("```bash\nbusi-infer scans/ --mask auto \\\n    --no-such-option x\n```\n")
    assert unknown_options("Train with `busi-train fit --data D --roi 1,2,3,4`.")  # --roi is busi-infer's
    assert unknown_options("Pass `--frobnicate` to it.")
    assert not unknown_options("`busi-train compare a b --readme docs/results.md --block real` and `--roi`")
    assert not unknown_options("`python -m busi train fit --seed 1 -v`, `busi-node --tls-cert/--tls-key`")


def test_the_five_commands_are_the_console_scripts():
    assert len(COMMANDS) == 5 and "The five commands are " + ", ".join(f"`{c}`" for c in COMMANDS[:-1]) \
        + f" and `{COMMANDS[-1]}`" in " ".join((ROOT / "README.md").read_text().split())


# ---- generated blocks and the record reference ------------------------------------------------

def test_every_generated_block_names_the_file_it_is_in():
    """`busi-train report/compare --readme FILE --block NAME` rewrite a block in place: the command
    shown in the block must name this very file, and the Makefile's targets must reach a block."""
    blocks = 0
    for doc in DOCS:
        text = doc.read_text()
        for name, body in re.findall(r"<!-- ([\w-]+):start -->\n(.*?)<!-- \1:end -->", text, re.S):
            blocks += 1
            cmd = re.match(r"_Written by `(busi-train (?:report|compare) [^`]*)`", body)
            assert cmd, f"{rel(doc)}: block {name} does not say which command wrote it"
            assert f"--readme {rel(doc)}" in cmd.group(1), f"{rel(doc)}: block {name}: {cmd.group(1)}"
            assert (f"--block {name}" in cmd.group(1)) == (name != "results"), cmd.group(1)
    assert blocks >= 4
    for file, name in re.findall(r"--readme (\S+) --block ([\w-]+)", (ROOT / "Makefile").read_text()):
        assert f"<!-- {name}:start -->" in (ROOT / file).read_text(), (file, name)


def test_the_readme_record_kinds_are_the_schema_variants():
    from busi.runtime.schema import record_schema

    variants = {v["title"]: v for v in record_schema()["oneOf"]}
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| kind | told by | holds |"):].split("\n\n")[0].splitlines()[2:]
    rows = {cells[0]: cells[1] for cells in ([c.strip() for c in ln.strip("|").split("|")] for ln in table)}
    assert set(rows) == set(variants)
    for kind, told_by in rows.items():
        field = re.search(r"`\"?(\w+)", told_by).group(1)
        assert field in variants[kind]["required"], (kind, field)


def test_the_readme_and_the_model_card_cite_busi_and_state_the_same_terms():
    from busi.runtime.card_markdown import BUSI_CITATION, BUSI_IMAGES_TERMS

    readme = " ".join((ROOT / "README.md").read_text().split())
    doi = re.search(r"doi:(\S+)", BUSI_CITATION).group(1)
    assert f"doi:{doi}" in readme and "Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A." in readme
    commit = re.search(r"commit ([0-9a-f]{7,})", BUSI_IMAGES_TERMS).group(1)
    assert f"github:yirutsai/Breast-ultrasound-dataset at commit {commit}" in readme
    assert "no licence file" in readme and "no licence file" in BUSI_IMAGES_TERMS
    assert (ROOT / "LICENSE").read_text().startswith("MIT License") and 'license = "MIT"' in \
        (ROOT / "pyproject.toml").read_text()
