"""BUSI scan, check-data, multi-mask merge, duplicate-aware split and manifest."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
from helpers import PROGRESS_MARKS, bench, cli, on_a_terminal
from PIL import Image

from busi.train import dataset as ds


def test_check_data_on_the_real_sample(sample):
    r = cli("busi-train", "check-data", sample, "--json")
    s = json.loads(r.stdout)
    assert s["counts"] == {"normal": 8, "benign": 8, "malignant": 8}
    assert sorted(s["multi_mask"]) == ["benign/benign (195).png", "benign/benign (4).png", "malignant/malignant (53).png"]
    groups = sorted(sorted(g) for g in s["duplicate_groups"])
    assert groups == [
        ["benign/benign (10).png", "benign/benign (327).png"],
        ["benign/benign (399).png", "malignant/malignant (93).png"],
        ["benign/benign (42).png", "malignant/malignant (51).png"],
        ["malignant/malignant (4).png", "malignant/malignant (5).png"],
    ]
    assert sorted(sorted(g) for g in s["conflicting_groups"]) == [groups[1], groups[2]]
    assert s["problems"] == {} and s["unusable"] is None
    assert not [m for m in PROGRESS_MARKS if m in r.stderr], r.stderr  # stderr not a terminal: no progress bar
    r, terminal = on_a_terminal("busi-train", "check-data", sample)  # on a terminal: a bar with rate and ETA
    assert r.returncode == 0 and "check-data" in terminal and "24/24" in terminal and "images/s" in terminal \
        and "ETA" in terminal, terminal[-2000:]
    text = r.stdout  # the summary stays on stdout
    assert "duplicate groups (4" in text and "label-conflicting groups (2)" in text and "images/s" not in text


def test_multi_mask_or_merge_on_real_files(sample):
    scan = ds.scan_folder(sample)
    s = next(x for x in scan.samples if x.path.name == "benign (195).png")
    assert [m.name for m in s.masks] == ["benign (195)_mask.png", "benign (195)_mask_1.png", "benign (195)_mask_2.png"]
    parts = [np.asarray(Image.open(m).convert("L")) > 127 for m in s.masks]
    merged = ds.load_mask(s, parts[0].shape)
    np.testing.assert_array_equal(merged, parts[0] | parts[1] | parts[2])
    assert merged.sum() > max(p.sum() for p in parts)  # the parts are really different


def test_split_keeps_duplicates_together_and_excludes_conflicts(sample):
    scan = ds.scan_folder(sample)
    ds.inspect(scan)
    ds.group_duplicates(scan)
    rows = ds.split(scan, seed=0)
    by_path = {r["path"]: r for r in rows}
    for g in scan.groups:
        paths = [scan.samples[i].path.relative_to(sample).as_posix() for i in g]
        if len({scan.samples[i].label for i in g}) > 1:
            assert not any(p in by_path for p in paths), "a label-conflicting group entered a split"
        else:
            assert len({by_path[p]["split"] for p in paths}) == 1, f"group {paths} straddles splits"
            assert len({by_path[p]["group"] for p in paths}) == 1 and by_path[paths[0]]["group"]
    assert len(rows) == 20
    kept = ds.split(scan, seed=0, keep_conflicts=True)
    extra = [r for r in kept if r["path"] not in by_path]
    assert len(extra) == 4 and {r["split"] for r in extra} == {"train"}


def test_no_group_straddles_on_phantoms_with_planted_duplicates(phantoms, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(phantoms, d)
    for i in (1, 2, 3):  # plant exact copies under new names
        for suffix in ("", "_mask"):
            shutil.copy(d / "benign" / f"benign ({i}){suffix}.png", d / "benign" / f"benign ({100 + i}){suffix}.png")
    scan = ds.scan_folder(d)
    ds.inspect(scan)
    ds.group_duplicates(scan)
    assert len(scan.groups) >= 3
    for seed in range(5):
        rows = ds.split(scan, seed=seed)
        split_of = {r["path"]: r["split"] for r in rows}
        for i in (1, 2, 3):
            assert split_of[f"benign/benign ({i}).png"] == split_of[f"benign/benign ({100 + i}).png"]


def test_manifest_is_byte_identical_for_same_data_and_seed(phantoms):
    def manifest(seed):
        scan = ds.scan_folder(phantoms)
        ds.inspect(scan)
        ds.group_duplicates(scan)
        return ds.manifest_bytes(ds.split(scan, seed=seed))

    a, b, c = manifest(0), manifest(0), manifest(1)
    assert a == b and a != c
    rows = list(csv.DictReader(io.StringIO(a.decode())))
    assert list(rows[0]) == ["path", "mask_paths", "label", "group", "split", "sha256"]
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0


def test_bad_data_folders_exit_2_with_one_line(tmp_path):
    cases = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "no classes": tmp_path / "flat",
    }
    cases["empty"].mkdir()
    cases["no classes"].mkdir()
    (cases["no classes"] / "x.png").write_bytes(b"x")
    for what, path in cases.items():
        for cmd in (["check-data", path], ["fit", "--data", path, "--out", tmp_path / "m", "--weights", "none"]):
            r = cli("busi-train", *cmd, check=False)
            assert r.returncode == 2, (what, cmd, r.stderr)
            lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
            assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()


def test_problem_files_are_listed(phantoms, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(phantoms, d)
    (d / "benign" / "benign (1).png").write_bytes(b"garbage")
    (d / "benign" / "benign (2)_mask.png").unlink()
    (d / "malignant" / "malignant (99)_mask.png").write_bytes((d / "malignant" / "malignant (1)_mask.png").read_bytes())
    for p in (d / "malignant").glob("malignant (3)_mask*.png"):
        Image.fromarray(np.zeros((50, 50), np.uint8)).save(p)
    r = cli("busi-train", "check-data", d, "--json")
    s = json.loads(r.stdout)
    assert "unreadable image" in s["problems"]["benign/benign (1).png"][0]
    assert s["problems"]["benign/benign (2).png"] == ["missing mask"]
    assert s["orphan_masks"] == ["malignant/malignant (99)_mask.png"]
    assert any("empty mask on a lesion class" in p for p in s["problems"]["malignant/malignant (3).png"])
    assert any("resized" in p for p in s["problems"]["malignant/malignant (3).png"])


def test_bad_usage_is_one_line_and_exit_2(tmp_path):
    cases = [
        ("busi-train", ["phantoms", "--out", tmp_path, "--per-class", "many"], "--per-class"),
        ("busi-train", ["nosuch"], "nosuch"),
        ("busi-infer", ["x.png", "--batch-size", "abc"], "--batch-size"),
        ("busi-infer", ["x.png", "--bogus"], "--bogus"),
        ("busi-export", [], "model_dir"),
        ("bench", [tmp_path, "--size", "x"], "--size"),
    ]
    for name, args, what in cases:
        r = bench(*args, check=False) if name == "bench" else cli(name, *args, check=False)
        assert r.returncode == 2 and r.stdout == "", (name, args, r.stderr)
        # one line, naming the option, no boxed panel, no traceback
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and what in r.stderr, (name, r.stderr)
    assert list(tmp_path.iterdir()) == []
    r = cli("busi-train", check=False)  # no command: the help page
    assert r.returncode == 2 and "check-data" in r.stdout + r.stderr
