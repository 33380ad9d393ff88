"""busi-node against a real PACS: Orthanc (Debian `orthanc`) and dcmtk's storescu/echoscu as the
scanner, on loopback ports, each test starting and stopping its own. Skipped, with the reason,
where they are not installed (`make test-deps` installs them as root)."""

from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from helpers import BIN, ROOT, cli, free_port, wait_for

from busi.train.phantoms import copy_instances

pytestmark = pytest.mark.skipif(
    not (shutil.which("Orthanc") and shutil.which("storescu") and shutil.which("echoscu")),
    reason="needs Orthanc and dcmtk (storescu, echoscu): run `make test-deps` as root (apt-get install orthanc dcmtk)",
)


class Orthanc:
    """A real Orthanc on loopback ports with its own storage folder (kept across restarts)."""

    def __init__(self, root: Path, node_port: int, **extra):
        self.root, self.dicom, self.http = root, free_port(), free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "busi-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
            "DicomAet": "ORTHANC", "DicomPort": self.dicom, "HttpPort": self.http, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomModalities": {"busi": ["BUSI", "127.0.0.1", node_port]}, **extra,
        }))
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(["Orthanc", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._up, 30, "Orthanc to start")

    def _up(self):
        try:
            return self.get("/system")
        except OSError:
            return None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=10) as r:
            body = r.read()
            return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def post(self, path: str, data) -> object:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=json.dumps(data).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read() or b"null")

    def series(self, modality: str) -> list[dict]:
        return self.post("/tools/find", {"Level": "Instance", "Query": {"Modality": modality}, "Expand": True})


class Node:
    """busi-node as a user starts it (a subprocess), with its JSON-lines log. Its stdout and
    stderr reach the log files through pipes, so that a file-size limit on the node (a full
    disk, `fsize` or `disk_full()`) limits its spool, not the test's record of what it said.
    `command`: what starts it instead of the console script (a wrapper that injects a fault)."""

    def __init__(self, model: Path, spool: Path, port: int, dest: str, log: Path, extra=(), fsize: int | None = None,
                 ready=None, command=None):
        self.args = [*(command or [str(BIN / "busi-node")]), *(["--model", str(model)] if model else []), "--spool",
                     str(spool), "--dest", dest, "--host", "127.0.0.1", "--port", str(port), "--allow", "SCANNER",
                     "--allow", "ORTHANC", *extra]
        self.port, self.log, self.fsize, self.spool = port, log, fsize, spool
        self.ready = ready or (lambda: echo(self.port, "SCANNER") == 0)
        self.start()

    def start(self):
        def limit():  # a spool that cannot take another byte, as a full disk would be
            if self.fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (self.fsize, resource.RLIM_INFINITY))

        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit)
        self._copiers = [threading.Thread(target=_copy, args=(pipe, path), daemon=True)
                         for pipe, path in ((self.proc.stdout, self.log), (self.proc.stderr, Path(str(self.log) + ".err")))]
        for t in self._copiers:
            t.start()
        wait_for(lambda: self.ready() or self.proc.poll() is not None, 60, "busi-node to listen")
        assert self.proc.poll() is None, self.stderr()[-2000:]

    def disk_full(self, limit: int | None = 0) -> None:
        """From now on no file of the node grows past `limit` bytes (None: no limit again)."""
        v = resource.RLIM_INFINITY if limit is None else limit  # the soft limit (raising a hard one needs a capability)
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (v, resource.RLIM_INFINITY))

    def events(self) -> list[dict]:
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()] if self.log.exists() else []

    def stderr(self) -> str:
        p = Path(str(self.log) + ".err")
        return p.read_text() if p.exists() else ""

    def wait(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout)
        for t in self._copiers:
            t.join(10)
        return rc

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(60)


def _copy(pipe, path: Path) -> None:
    with open(path, "ab") as f:
        for line in pipe:
            f.write(line)
            f.flush()


def echo(port: int, aet: str) -> int:
    return subprocess.run(["echoscu", "-aet", aet, "-aec", "BUSI", "127.0.0.1", str(port)], capture_output=True).returncode


def storescu(port: int, files, aet: str = "SCANNER", aec: str = "BUSI") -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    """Six phantom ultrasound images as one DICOM study from a scanner (files without extension)."""
    d = tmp_path_factory.mktemp("scanner")
    cli("busi-train", "phantoms", "--out", d / "png", "--per-class", 2, "--seed", 11, "--dicom", d / "dicom")
    return sorted(p for p in (d / "dicom").rglob("*") if p.is_file())


@pytest.fixture
def pacs(tmp_path):
    port = free_port()
    o = Orthanc(tmp_path / "orthanc", port)
    o.node_port = port
    yield o
    o.stop()


def start_node(exported, tmp_path, pacs, extra=(), mask="none", **kw) -> Node:
    """busi-node for `pacs`; without study summaries unless `extra` asks (they would add SRs to
    count); whole-image masks unless `mask="auto"` (which may abstain on an image: no result)."""
    extra = tuple(map(str, extra)) + (() if "--study-idle" in extra else ("--study-idle", "0")) + ("--mask", mask)
    return Node(exported / "model.onnx", tmp_path / "spool", pacs.node_port, f"ORTHANC@127.0.0.1:{pacs.dicom}",
                tmp_path / "node.jsonl", extra=extra, **kw)


def results_in(pacs, n: int, n_sr: int | None = None) -> tuple[list, list]:
    n_sr = n if n_sr is None else n_sr
    sr = wait_for(lambda: (lambda x: x if len(x) >= n_sr else None)(pacs.series("SR")), 90, f"{n_sr} SR in Orthanc")
    sc = wait_for(lambda: (lambda x: x if len(x) >= n else None)(pacs.series("OT")), 90, f"{n} SC in Orthanc")
    return sr, sc


def test_scanner_to_node_to_pacs(exported, tmp_path, pacs, study):
    """storescu -> busi-node -> Orthanc: in the same study a new SR and SC series, and in each SR
    the finding and P(malignant) that the Predictor gives for its image."""
    import highdicom as hd

    from busi.runtime.predictor import Predictor
    from busi.runtime.results import NeedsRoi

    mask = "auto" if (exported / "segmenter.onnx").is_file() else "none"
    node = start_node(exported, tmp_path, pacs, mask=mask)
    try:
        assert echo(node.port, "SCANNER") == 0  # C-ECHO: "verify" works
        r = storescu(node.port, study)
        assert r.returncode == 0, r.stderr
        decided = lambda: [e for e in node.events() if e["event"] in ("classified", "needs_roi")]  # noqa: E731
        wait_for(lambda: len(decided()) == len(study), 90, "every image classified or abstained on")
        abstained = {e["sop"] for e in decided() if e["event"] == "needs_roi"}
        n = len(study) - len(abstained)
        sr, sc = results_in(pacs, n, n_sr=len(study))  # every image an SR; an overlay where classified
        time.sleep(1)
        assert len(pacs.series("SR")) == len(study) and len(pacs.series("OT")) == n
        pred = Predictor(exported / "model.onnx", device="cpu")
        by_ref, not_classified, node_sr = {}, {}, set()
        for inst in sr:
            ds = hd.sr.srread(__import__("io").BytesIO(pacs.get(f"/instances/{inst['ID']}/file")))
            node_sr.add(ds.SOPInstanceUID)
            ref = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
            group = (ds.content.get_planar_roi_measurement_groups() or ds.content.get_image_measurement_groups())[0]
            m = {x.name.meaning: x.value for x in group.get_measurements()}
            if "Lesion presence score" in m:  # "not classified, ROI needed"
                assert "Probability of cancer" not in m and "ROI needed" in ds.SeriesDescription
                not_classified[ref.ReferencedSOPInstanceUID] = m["Lesion presence score"]
                continue
            by_ref[ref.ReferencedSOPInstanceUID] = (m["Probability of cancer"], ds.StudyInstanceUID)
        for f in study:
            src = pydicom.dcmread(f, stop_before_pixels=True)
            res = pred.predict(f, mask=mask)
            if isinstance(res, NeedsRoi):  # the node abstained where the Predictor does: an SR that says so
                assert src.SOPInstanceUID in abstained and src.SOPInstanceUID not in by_ref
                assert not_classified[src.SOPInstanceUID] == pytest.approx(res.lesion_presence, abs=1e-5)
                continue
            p_mal, study_uid = by_ref[src.SOPInstanceUID]
            assert study_uid == src.StudyInstanceUID
            assert p_mal == pytest.approx(res.flag_probability, abs=1e-5)
        # busi-infer with the node's settings gives the same objects the same UIDs (busi.runtime.dicom_identity)
        r = cli("busi-infer", *study, "--model", exported / "model.onnx", "--mask", mask, "--frames", "all",
                "--dicom-out", tmp_path / "infer-out", check=False)
        assert r.returncode in (0, 3), r.stderr
        assert {pydicom.dcmread(f).SOPInstanceUID for f in (tmp_path / "infer-out").glob("*.sr.dcm")} == node_sr
        kinds = [e["event"] for e in node.events()]
        assert kinds.count("received") == kinds.count("classified") + kinds.count("needs_roi") == len(study)
        assert kinds.count("sent") == len(sr) + len(sc) + sum(1 for _ in pacs.series("SEG"))
        # security: an unknown calling AE is rejected; a SOP class busi does not take is refused
        assert echo(node.port, "INTRUDER") != 0
        ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
        r = storescu(node.port, [ct])
        assert r.returncode != 0 or "no presentation context" in (r.stdout + r.stderr).lower(), r.stderr
        assert not any(e.get("modality") == "CT" for e in node.events())
        assert subprocess.run(["echoscu", "-aet", "SCANNER", "-aec", "OTHER", "127.0.0.1", str(node.port)],
                              capture_output=True).returncode != 0  # addressed to another AE title
        from pynetdicom import AE
        from pynetdicom.sop_class import CTImageStorage

        ct_only = AE(ae_title="SCANNER")
        ct_only.add_requested_context(CTImageStorage)  # nothing the node takes: accepted, then aborted
        assert not ct_only.associate("127.0.0.1", node.port, ae_title="BUSI").is_established
        refused = lambda: [e["reason"] for e in node.events() if e["event"] == "refused"]  # noqa: E731
        wait_for(lambda: any("no proposed SOP class is one busi-node takes" in x for x in refused()), 10, "the CT-only one")
        assert any("calling AE 'INTRUDER' is not allowed" in x for x in refused()), refused()
        assert any("called AE 'OTHER' is not this node's 'BUSI'" in x for x in refused()), refused()

    finally:
        assert node.stop() == 0  # SIGTERM: a clean stop


def test_the_node_runs_its_model_on_busi_serve(exported, tmp_path, pacs, study):
    """busi-node --server: the classifier runs on busi-serve (the remote backend), the results
    reach the PACS with the P(malignant) the local runtime gives and the served model's sha256."""
    import highdicom as hd

    from busi.runtime.predictor import Predictor
    from busi.serve.process import running

    with running(exported, "--threads", 2, token="node-secret") as server:
        node = Node(None, tmp_path / "spool", pacs.node_port, f"ORTHANC@127.0.0.1:{pacs.dicom}", tmp_path / "node.jsonl",
                    extra=("--server", server.url, "--mask", "none", "--study-idle", "0", "--token", "node-secret"))
        try:
            assert storescu(node.port, study).returncode == 0
            wait_for(lambda: sum(e["event"] == "classified" for e in node.events()) == len(study), 90, "every image classified")
            sr, _ = results_in(pacs, len(study))
        finally:
            assert node.stop() == 0
    local = Predictor(exported / "model.onnx", device="cpu")
    by_ref = {}
    for inst in sr:
        ds = hd.sr.srread(__import__("io").BytesIO(pacs.get(f"/instances/{inst['ID']}/file")))
        ref = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        group = ds.content.get_image_measurement_groups()[0]
        by_ref[ref.ReferencedSOPInstanceUID] = {x.name.meaning: x.value for x in group.get_measurements()}
    for f in study:
        sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert by_ref[sop]["Probability of cancer"] == pytest.approx(local.predict(f, mask="none").flag_probability, abs=1e-5)
    r = subprocess.run([str(BIN / "busi-node"), "--spool", str(tmp_path / "s2"), "--server", "http://127.0.0.1:9",
                        "--host", "127.0.0.1", "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "server http://127.0.0.1:9" in r.stderr.strip().splitlines()[-1], r.stderr


#: busi-node with its DICOM parses written down: pynetdicom's decoding of a received dataset,
#: busi's parse of a spooled file, and any pydicom read of a file by its name
COUNTING = """
import os, sys
import pydicom, pynetdicom.events as ev
import busi.runtime.dicom as dicom
log = open(os.environ["BUSI_TEST_PARSES"], "a", buffering=1)
def counted(kind, real, name):
    def wrapper(*a, **kw):
        log.write(f"{kind} {name(a)}\\n")
        return real(*a, **kw)
    return wrapper
ev.decode = counted("wire", ev.decode, lambda a: "-")
dicom.read_dataset = counted("spool", dicom.read_dataset, lambda a: os.path.basename(str(a[0])))
real_dcmread = pydicom.dcmread
def dcmread(fp, *a, **kw):
    if isinstance(fp, (str, os.PathLike)):
        log.write(f"file {os.path.abspath(fp)}\\n")
    return real_dcmread(fp, *a, **kw)
pydicom.dcmread = dcmread
from busi.node.cli import main
sys.argv[0] = "busi-node"
main()
"""


def test_a_study_gets_a_summary_and_a_later_image_supersedes_it(exported, tmp_path, pacs, study, monkeypatch):
    """--study-idle: a study quiet for that long gets one study SR (highest P(malignant), images,
    flag); an image arriving later gives a new study SR in the same series that supersedes it.
    Each instance is parsed twice, once as received and once from the spool (the header that
    decides and the pixels come from the same parse); a summary reads the headers it kept."""
    import io
    import sys
    from collections import Counter

    import highdicom as hd

    parses = tmp_path / "parses.txt"
    monkeypatch.setenv("BUSI_TEST_PARSES", str(parses))
    node = start_node(exported, tmp_path, pacs, extra=("--study-idle", "2"), command=[sys.executable, "-c", COUNTING])

    def summaries():
        return [e for e in node.events() if e["event"] == "summarised"]

    def in_pacs(sop):
        found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop}})
        return found[0] if found else None

    try:
        assert storescu(node.port, study[:5]).returncode == 0
        first = wait_for(lambda: summaries(), 90, "a study summary")[0]
        p_first = [e["p_malignant"] for e in node.events() if e["event"] == "classified"]
        assert first["images"] == 5 and first["version"] == 1 and first["p_malignant"] == max(p_first)
        sr = hd.sr.srread(io.BytesIO(pacs.get(f"/instances/{wait_for(lambda: in_pacs(first['sop']), 60, 'the SR')}/file")))
        group = sr.content.get_image_measurement_groups()[0]
        m = {x.name.meaning: x.value for x in group.get_measurements()}
        assert m["Images classified in the study"] == 5 and m["Probability of cancer"] == pytest.approx(max(p_first), abs=1e-6)
        assert storescu(node.port, study[5:]).returncode == 0
        second = wait_for(lambda: summaries()[1:], 90, "a second study summary")[0]
        assert second["images"] == 6 and second["version"] == 2 and second["supersedes"] == first["sop"]
        new = pydicom.dcmread(io.BytesIO(pacs.get(f"/instances/{wait_for(lambda: in_pacs(second['sop']), 60, 'the SR')}/file")))
        assert new.SeriesInstanceUID == sr.SeriesInstanceUID and new.SOPInstanceUID != sr.SOPInstanceUID
        assert new.InstanceNumber == 2 and new.StudyInstanceUID == sr.StudyInstanceUID
    finally:
        node.stop()
    seen = Counter(parses.read_text().splitlines())
    sops = {sop_of(f) for f in study}
    assert seen["wire -"] == len(sops)  # each received dataset decoded once by pynetdicom
    assert {k.split()[1] for k in seen if k.startswith("spool ")} == {f"{sop}.dcm" for sop in sops}
    assert all(n == 1 for k, n in seen.items() if k.startswith("spool ")), seen
    # no image is read again from incoming; the summaries (5 images, then 6) read the headers kept for them
    files = Counter()
    for k, n in seen.items():
        if k.startswith("file "):
            files[Path(k[5:]).relative_to((tmp_path / "spool").resolve()).parts[0]] += n
    assert "incoming" not in files and files["studies"] == 5 + 6, seen


def test_the_pacs_routes_a_study_to_the_node(exported, tmp_path, pacs, study):
    """Orthanc knows busi-node as modality `busi` and pushes a whole study to it; the results come back."""
    node = start_node(exported, tmp_path, pacs)
    try:
        assert storescu(pacs.dicom, study, aec="ORTHANC").returncode == 0
        studies = pacs.get("/studies")
        assert len(studies) == 1
        pacs.post("/modalities/busi/store", {"Resources": studies, "Synchronous": True})
        results_in(pacs, len(study))
        assert len(pacs.get(f"/studies/{studies[0]}/series")) >= 3  # the US series, SR, SC (+ SEG)
    finally:
        node.stop()


def test_the_example_lua_script_routes_new_ultrasound_to_the_node(exported, tmp_path, study):
    """examples/route-us-to-busi.lua: every ultrasound instance stored in Orthanc goes to
    busi-node, and its results (not ultrasound) are not routed again."""
    port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", port, LuaScripts=[str(ROOT / "examples" / "route-us-to-busi.lua")])
    pacs.node_port = port
    node = start_node(exported, tmp_path, pacs)
    try:
        assert storescu(pacs.dicom, study, aec="ORTHANC").returncode == 0
        results_in(pacs, len(study))
        time.sleep(3)
        assert sum(e["event"] == "received" for e in node.events()) == len(study)
    finally:
        node.stop()
        pacs.stop()


def test_the_example_config_reads(tmp_path):
    from busi.node.config import NodeConfig

    cfg = NodeConfig.from_sources(ROOT / "examples" / "busi-node.toml", port=11113)
    assert cfg.port == 11113 and cfg.dest.ae == "ORTHANC" and cfg.dest.port == 4242 and "ORTHANC" in cfg.allow
    assert (cfg.batch_size, cfg.batch_delay) == (8, 0.02)
    from busi.runtime.errors import UsageError

    for bad in ({"batch_size": 0}, {"batch_size": 2.5}, {"batch_delay": -1}):  # as a TOML file may give them
        with pytest.raises(UsageError, match="--batch-"):
            NodeConfig.from_sources(None, model="m.onnx", spool=tmp_path, **bad)


def test_results_wait_for_a_pacs_that_is_down(exported, tmp_path, pacs, study):
    node = start_node(exported, tmp_path, pacs, extra=("--queue", "64"))
    try:
        pacs.stop()
        assert storescu(node.port, study).returncode == 0
        wait_for(lambda: sum(e["event"] == "classified" for e in node.events()) == len(study), 90, "classification")
        assert pending(tmp_path / "spool")  # waiting, not lost
        pacs.start()
        results_in(pacs, len(study))
        wait_for(lambda: not list((tmp_path / "spool" / "outgoing").glob("*.dcm")), 60, "an empty outgoing spool")
    finally:
        node.stop()


def test_a_killed_node_resumes_and_stores_everything_exactly_once(exported, tmp_path, pacs, study):
    node = start_node(exported, tmp_path, pacs)
    assert storescu(node.port, study).returncode == 0  # acknowledged: now on disk
    node.stop(signal.SIGKILL)
    node.start()
    try:
        results_in(pacs, len(study))
        wait_for(lambda: not list((tmp_path / "spool" / "outgoing").glob("*.dcm")), 60, "an empty outgoing spool")
        time.sleep(2)
        assert len(pacs.series("SR")) == len(study) and len(pacs.series("OT")) == len(study)
        assert not list((tmp_path / "spool" / "incoming").glob("*.dcm"))
    finally:
        node.stop()


def test_a_full_spool_answers_out_of_resources_and_a_bad_image_fails_alone(exported, tmp_path, pacs, study):
    """A spool that cannot be written (file-size limit, as a full disk) gives the sender a
    failure status, not a lost image; a corrupt pixel stream is classified as failed with its
    reason, and the node goes on."""
    full = Node(exported / "model.onnx", tmp_path / "full-spool", pacs.node_port, f"ORTHANC@127.0.0.1:{pacs.dicom}",
                tmp_path / "full.jsonl", extra=("--mask", "none"), fsize=1024)
    try:
        r = storescu(full.port, study[:1])
        assert "0xa700" in (r.stdout + r.stderr).lower() or r.returncode != 0, r.stdout + r.stderr
        refused = [e for e in full.events() if e["event"] == "refused"]
        assert refused and "cannot spool" in refused[0]["reason"]
    finally:
        full.stop()
    bad = tmp_path / "bad"
    ds = pydicom.dcmread(study[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    # whole as far as the wire can tell (a complete JPEG stream for its one frame), damaged inside
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xdb" + bytes(range(256)) * 8 + b"\xff\xd9"])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    ds.save_as(bad, enforce_file_format=True)
    node = start_node(exported, tmp_path, pacs)
    try:
        assert pynet_store(node.port, [bad]) == [0]  # pynetdicom proposes its JPEG transfer syntax as it is
        assert storescu(node.port, [study[1]]).returncode == 0
        wait_for(lambda: any(e["event"] == "classified" for e in node.events()), 90, "the good image")
        failed = wait_for(lambda: [e for e in node.events() if e["event"] == "failed"], 30, "the damaged image failed")
        assert len(failed) == 1 and failed[0]["sop"] == ds.SOPInstanceUID and failed[0]["reason"], failed
        assert (tmp_path / "spool" / "failed" / f"{ds.SOPInstanceUID}.dcm").is_file()
    finally:
        node.stop()


def test_dicom_over_tls_with_a_certificate_made_here(exported, tmp_path, pacs):
    """--tls-cert/--tls-key: a TLS client (pynetdicom) verifies the node's certificate and gets
    its C-ECHO answered; a client without TLS gets nothing."""
    import ssl

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
                    "-subj", "/CN=busi-node", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)

    def tls_echo():
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(Verification)
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        assoc = ae.associate("127.0.0.1", pacs.node_port, ae_title="BUSI", tls_args=(ctx, "127.0.0.1"))
        if not assoc.is_established:
            return None
        status = assoc.send_c_echo()
        assoc.release()
        return status.Status == 0

    node = start_node(exported, tmp_path, pacs, extra=("--tls-cert", cert, "--tls-key", key), ready=tls_echo)
    try:
        assert tls_echo() is True
        assert echo(node.port, "SCANNER") != 0
        wait_for(lambda: any("TLS handshake failed" in e.get("reason", "") for e in node.events()), 10,
                 "the failed handshake in the log")
    finally:
        assert node.stop() == 0


def test_load_100_instances_over_4_associations(exported, tmp_path, pacs, study):
    """All acknowledged, classified and stored; the node's peak RSS stays bounded (no timing asserted:
    make bench measures throughput)."""
    files = copy_instances(study, tmp_path / "load", 100, "load")
    node = start_node(exported, tmp_path, pacs)
    try:
        senders = [subprocess.Popen(["storescu", "-aet", "SCANNER", "-aec", "BUSI", "127.0.0.1", str(node.port),
                                     *map(str, files[i::4])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                   for i in range(4)]
        assert [p.wait(300) for p in senders] == [0, 0, 0, 0]
        results_in(pacs, 100)
        wait_for(lambda: not list((tmp_path / "spool" / "outgoing").glob("*.dcm")), 120, "an empty outgoing spool")
        kinds = [e["event"] for e in node.events()]
        assert kinds.count("received") == kinds.count("classified") == 100 and "failed" not in kinds
        assert len(pacs.series("SR")) == 100 and len(pacs.series("OT")) == 100
        peak_kb = int(next(ln.split()[1] for ln in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines()
                           if ln.startswith("VmHWM")))
        assert peak_kb < 2 * 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"
        # the model leaves a core to the thread writing the results (on 1 core: the one it has)
        cores = len(os.sched_getaffinity(0))
        assert f"model on {max(1, cores - 1)} thread(s)" in node.stderr(), node.stderr()[-500:]
    finally:
        node.stop()


def test_a_burst_is_classified_in_batches_as_one_at_a_time_and_a_damaged_image_fails_alone(exported, tmp_path, pacs,
                                                                                             study):
    """Eight instances acknowledged by an earlier run (one with a JPEG stream that is whole on
    the wire and damaged inside) are one batch at the start; then a burst of twelve over four
    associations. Fewer model runs than images (the node's `batch` events), the damaged one
    failed alone with its reason, and each SR's P(malignant) is what busi-infer gives for the
    same file (one image at a time through the Predictor would give the same)."""
    import highdicom as hd

    files = copy_instances(study, tmp_path / "burst", 19, "burst")
    bad = variant(study[0], tmp_path / "damaged")
    ds = pydicom.dcmread(bad)
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xdb" + bytes(range(256)) * 8 + b"\xff\xd9"])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    ds.save_as(bad, enforce_file_format=True)
    incoming = tmp_path / "spool" / "incoming"
    incoming.mkdir(parents=True)
    for f in [*files[:7], bad]:
        shutil.copy(f, incoming / f"{sop_of(f)}.dcm")
    node = start_node(exported, tmp_path, pacs, extra=("--batch-size", "8"))
    try:
        senders = [subprocess.Popen(["storescu", "-aet", "SCANNER", "-aec", "BUSI", "127.0.0.1", str(node.port),
                                     *map(str, files[7 + i::4])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                   for i in range(4)]
        assert [p.wait(120) for p in senders] == [0, 0, 0, 0]
        sr, _ = results_in(pacs, len(files))
        events = node.events()
        batches = [e for e in events if e["event"] == "batch"]
        assert batches and batches[0]["batch"] == 8 and batches[0]["classified"] == 8, batches
        assert sum(b["batch"] for b in batches) == len(files) + 1 and len(batches) < len(files) + 1, batches
        failed = [e for e in events if e["event"] == "failed"]
        assert [e["sop"] for e in failed] == [ds.SOPInstanceUID] and "instance" in failed[0]["reason"], failed
        assert sum(e["event"] == "classified" for e in events) == len(files)
        r = cli("busi-infer", *files, "--model", exported / "model.onnx", "--mask", "none", "--frames", "all",
                "--format", "jsonl", "--device", "cpu")
        expected = {json.loads(ln)["dicom"]["SOPInstanceUID"]: json.loads(ln) for ln in r.stdout.splitlines()}
        got = {}
        for inst in sr:
            d = hd.sr.srread(__import__("io").BytesIO(pacs.get(f"/instances/{inst['ID']}/file")))
            ref = d.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
            group = (d.content.get_planar_roi_measurement_groups() or d.content.get_image_measurement_groups())[0]
            got[ref.ReferencedSOPInstanceUID] = {x.name.meaning: x.value for x in group.get_measurements()}
        assert sorted(got) == sorted(expected)
        for sop, rec in expected.items():
            assert got[sop]["Probability of cancer"] == pytest.approx(rec["probabilities"]["malignant"], abs=1e-5)
    finally:
        assert node.stop() == 0


def test_node_settings_are_checked(tmp_path, exported):
    r = cli("busi-node", "--model", exported / "model.onnx", "--spool", tmp_path / "s", "--dest", "nonsense", check=False)
    assert r.returncode == 2 and "AE@host:port" in r.stderr
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'model = "{exported / "model.onnx"}"\nspool = "{tmp_path / "s"}"\nport = 11112\ncolour = "red"\n')
    r = cli("busi-node", "--config", cfg, check=False)
    assert r.returncode == 2 and "unknown setting(s) colour" in r.stderr


# ---- the node's promise: every instance answered 0x0000 ends in its results at the destination
# ---- or a `failed` record with the reason (issue 28) -------------------------------------------

def pynet_store(port: int, items, aec: str = "BUSI") -> list[int | None]:
    """pynetdicom as the sender (a scanner that may misbehave): each item a file path (sent as
    its bytes, undecoded: a file cut short arrives cut short) or a Dataset; the statuses."""
    from pynetdicom import AE

    ae = AE(ae_title="SCANNER")
    for it in items:
        meta = pydicom.dcmread(it, stop_before_pixels=True).file_meta if isinstance(it, Path) else it.file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    assert assoc.is_established
    try:
        return [getattr(assoc.send_c_store(it), "Status", None) for it in items]
    finally:
        if assoc.is_established:
            assoc.release()


def variant(src: Path, out: Path, **changes) -> Path:
    """A copy of an instance with a new SOP Instance UID and the given attributes changed."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    for k, v in changes.items():
        setattr(ds, k, v)
    ds.save_as(out, enforce_file_format=True)
    return out


def delivered(pacs) -> dict[str, int]:
    """Source SOP Instance UID -> how many per-image SRs in Orthanc reference it (more than one: a duplicate)."""
    out: dict[str, int] = {}
    for inst in pacs.series("SR"):
        tags = pacs.get(f"/instances/{inst['ID']}/simplified-tags")
        for series in tags.get("CurrentRequestedProcedureEvidenceSequence", [{}])[0].get("ReferencedSeriesSequence", []):
            refs = series.get("ReferencedSOPSequence", [])
            if "study summary" not in str(tags.get("SeriesDescription", "")).lower():
                sop = refs[0]["ReferencedSOPInstanceUID"]
                out[sop] = out.get(sop, 0) + 1
    return out


def failed_records(spool: Path) -> dict[str, str]:
    """SOP Instance UID -> reason, for every instance with a failed record (the image, or a
    result the destination refused for good)."""
    out = {}
    for p in (spool / "done").glob("[!.]*.json"):  # not the node's temp files (.tmp-*)
        r = json.loads(p.read_text())
        if r["event"] == "failed":
            assert (spool / "failed" / f"{p.stem}.dcm").is_file()
            out[r["sop"]] = r["reason"]
    for p in (spool / "failed" / "results").glob("[!.]*.json"):
        r = json.loads(p.read_text())
        out[r["sop"]] = f"{r['file']}: {r['reason']}"
    return out


def assert_the_promise(pacs, spool: Path, acknowledged: set[str]) -> dict:
    """Each acknowledged instance: its SR in Orthanc (once) or a failed record, not both, not neither."""
    got, failed = delivered(pacs), failed_records(spool)
    lost = {s for s in acknowledged if s not in got and s not in failed}
    both = {s for s in acknowledged if s in got and s in failed}
    assert not lost, f"acknowledged, neither delivered nor failed: {sorted(lost)}"
    assert not both, f"delivered and failed: {sorted(both)}"
    assert all(n == 1 for n in got.values()), f"duplicates in Orthanc: {got}"
    return {"acknowledged": len(acknowledged), "delivered": len(set(got) & acknowledged),
            "failed": len(set(failed) & acknowledged), "duplicates": sum(n - 1 for n in got.values())}


def pending(spool: Path) -> list[str]:
    """Results waiting in outgoing (glob, not rglob: the sender removes folders as it goes)."""
    return glob.glob(str(spool / "outgoing" / "**" / "*.dcm"), recursive=True)


def sop_of(f: Path) -> str:
    return str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)


def test_a_study_uid_with_letters_is_one_instance_not_the_end_of_the_worker(exported, tmp_path, pacs, study):
    """The poison pill: a StudyInstanceUID with letters (study summaries on). It ends classified
    or failed on its own; the images after it are classified, and pydicom's warnings about
    it are JSON events, not raw lines."""
    poison = variant(study[0], tmp_path / "poison", StudyInstanceUID=study_uid_with_letters())
    node = start_node(exported, tmp_path, pacs, extra=("--study-idle", "1"))
    try:
        assert storescu(node.port, [poison, study[1]]).returncode == 0  # both acknowledged
        decided = lambda: {e["sop"] for e in node.events() if e["event"] in ("classified", "failed") and "sop" in e}  # noqa: E731
        wait_for(lambda: {sop_of(poison), sop_of(study[1])} <= decided(), 90, "both images decided")
        assert storescu(node.port, [study[2]]).returncode == 0  # the worker is alive
        wait_for(lambda: sop_of(study[2]) in decided(), 60, "the image after the poison pill")
        wait_for(lambda: any(e["event"] == "summarised" for e in node.events()), 30, "the good study's summary")
        acknowledged = {sop_of(f) for f in (poison, study[1], study[2])}
        wait_for(lambda: not pending(tmp_path / "spool"), 60, "an empty outgoing spool")
        counts = assert_the_promise(pacs, tmp_path / "spool", acknowledged)
        assert counts["delivered"] >= 2, counts
        assert not any(e["event"] == "fatal" for e in node.events())
        assert any(e["event"] == "warning" and "Invalid value for VR UI" in e["message"] for e in node.events())
    finally:
        assert node.stop() == 0
    assert "Warning" not in node.stderr() and "warnings.warn" not in node.stderr(), node.stderr()[-2000:]


def study_uid_with_letters() -> str:
    return pydicom.uid.generate_uid()[:50] + ".ABC"


def test_a_dataset_cut_short_or_never_classifiable_is_refused_not_acknowledged(exported, tmp_path, pacs, study):
    """A sender whose dataset is cut short on the wire hears a failure status (it keeps the
    image), not success; an image that can never be taken (65535 x 65535 pixels, a million
    frames) hears a permanent refusal (0xCxxx), not 'out of resources, try later' (0xA700)."""
    raw = study[0].read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(variant(study[0], tmp_path / "v").read_bytes()[: len(raw) // 2])
    huge = pydicom.dcmread(variant(study[1], tmp_path / "huge", Rows=65535, Columns=65535))
    cine = pydicom.dcmread(variant(study[1], tmp_path / "cine", NumberOfFrames=1_000_000))
    node = start_node(exported, tmp_path, pacs)
    try:
        statuses = pynet_store(node.port, [cut, huge, cine, study[2]])
        assert 0xC000 <= statuses[0] <= 0xCFFF, hex(statuses[0] or 0)
        assert all(0xC000 <= s <= 0xCFFF for s in statuses[1:3]), [hex(s or 0) for s in statuses]
        assert statuses[3] == 0
        refused = {e.get("sop"): e["reason"] for e in node.events() if e["event"] == "refused"}
        assert "pixel data" in refused[sop_of(tmp_path / "v")], refused
        assert "above the limit" in refused[huge.SOPInstanceUID] and "above the limit" in refused[cine.SOPInstanceUID]
        wait_for(lambda: sop_of(study[2]) in delivered(pacs), 90, "the good image's SR in Orthanc")
        spool = tmp_path / "spool"
        assert [p.name for p in spool.rglob("*") if sop_of(tmp_path / "v") in p.name] == []  # nothing kept of it
        assert_the_promise(pacs, spool, {sop_of(study[2])})
    finally:
        assert node.stop() == 0


def test_a_full_disk_waits_and_loses_nothing(exported, tmp_path, pacs, study):
    """A full disk (a file-size limit on the node) while images wait, while results are
    written, and while a failed image is moved to failed/: nothing is failed for good because
    of it, no result reaches outgoing without the others of its image, the sender of a new
    image hears 0xA700 meanwhile, and once there is space again everything is finished."""
    bad = variant(study[3], tmp_path / "bad")
    ds = pydicom.dcmread(bad)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # a damaged image: the worker fails it
    ds.save_as(bad, enforce_file_format=True)
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    waiting = [study[0], study[1], bad]  # acknowledged by an earlier run, waiting in the spool
    for f in waiting:
        shutil.copy(f, spool / "incoming" / f"{sop_of(f)}.dcm")
    cfg = tmp_path / "fast.toml"
    cfg.write_text("retry = 0.5\nretry_max = 2.0\n")
    node = start_node(exported, tmp_path, pacs, extra=("--config", cfg), fsize=64)  # tempfile checks with 4 bytes
    try:
        deferred = lambda: {e["sop"] for e in node.events() if e["event"] == "deferred"}  # noqa: E731
        wait_for(lambda: {sop_of(f) for f in waiting} <= deferred(), 30, "every waiting image deferred")
        r = storescu(node.port, [study[2]])
        assert "0xa700" in (r.stdout + r.stderr).lower() or r.returncode != 0, r.stdout + r.stderr
        assert not list((spool / "failed").glob("*.dcm")) and not pending(spool)
        # space for an image and a record, not for an overlay (3 x the grey image): the results of
        # an image are written, the overlay fails: none of them reaches outgoing
        room = max(f.stat().st_size for f in study[:3]) * 3 // 2
        node.disk_full(room)
        assert storescu(node.port, [study[2]]).returncode == 0
        wait_for(lambda: sop_of(bad) in failed_records(spool), 30, "the bad image failed for good (its own fault)")
        wait_for(lambda: sop_of(study[2]) in deferred(), 30, "the new image deferred")
        time.sleep(2)
        assert not pending(spool) and pacs.series("SR") == []
        assert not any(e["event"] == "classified" for e in node.events())
        node.disk_full(None)
        wait_for(lambda: sum(e["event"] == "classified" for e in node.events()) == 3, 60, "the three good images")
        wait_for(lambda: not pending(spool), 60, "an empty outgoing spool")
        counts = assert_the_promise(pacs, spool, {sop_of(f) for f in (*waiting, study[2])})
        assert counts == {"acknowledged": 4, "delivered": 3, "failed": 1, "duplicates": 0}
        assert len(pacs.series("OT")) == 3 and not any(e["event"] == "fatal" for e in node.events())
        assert "pixel" in failed_records(spool)[sop_of(bad)].lower()
    finally:
        assert node.stop() == 0


def test_a_destination_that_refuses_gets_backoff_then_the_result_is_set_aside(exported, tmp_path, study):
    """A destination (pynetdicom SCP) answering 0xA700 to SRs and 0xC000 to overlays: each send
    failure waits (2 s, doubling), an SR is set aside after --send-tries refusals, an overlay
    at the first 0xC000, each with its status in failed/results; nothing is re-sent after."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Comprehensive3DSRStorage, ComprehensiveSRStorage, SecondaryCaptureImageStorage

    tries: list[tuple[float, str]] = []

    def on_store(event):
        modality = str(event.dataset.get("Modality", ""))
        tries.append((time.monotonic(), modality))
        return 0xA700 if modality == "SR" else 0xC000

    dest = AE(ae_title="REFUSER")
    for cx in (ComprehensiveSRStorage, Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
        dest.add_supported_context(cx)
    port = free_port()
    server = dest.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    node = Node(exported / "model.onnx", tmp_path / "spool", free_port(), f"REFUSER@127.0.0.1:{port}",
                tmp_path / "node.jsonl", extra=("--mask", "none", "--study-idle", "0", "--send-tries", "3"))
    try:
        assert storescu(node.port, study[:1]).returncode == 0
        aside = tmp_path / "spool" / "failed" / "results"
        wait_for(lambda: len(list(aside.glob("*.json"))) == 2, 60, "the SR and the overlay set aside")
        time.sleep(3)
        sr = [t for t, m in tries if m == "SR"]
        assert len(sr) == 3 and [m for _, m in tries].count("OT") == 1, tries
        assert sr[1] - sr[0] >= 1.8 and sr[2] - sr[1] >= 3.6, sr  # 2 s, then 4 s
        records = {json.loads(p.read_text())["status"]: json.loads(p.read_text()) for p in aside.glob("*.json")}
        assert set(records) == {"0xA700", "0xC000"} and records["0xA700"]["tries"] == 3
        assert all(r["sop"] == sop_of(study[0]) for r in records.values())
        assert not pending(tmp_path / "spool")
        assert len(list(aside.glob("*.dcm"))) == 2
    finally:
        assert node.stop() == 0
        server.shutdown()


WORKER_DIES = """
import sys
from busi.node import spool, service
real = spool.Spool.waiting
def waiting(self):
    files = real(self)
    if files:
        raise RuntimeError("injected: the worker meets something no instance handler catches")
    return files
spool.Spool.waiting = waiting
real_shutdown = service.Node.shutdown
def shutdown(self):  # time for the test to see the SCP refuse
    import time; time.sleep(4); real_shutdown(self)
service.Node.shutdown = shutdown
from busi.node.cli import main
sys.argv[0] = "busi-node"
main()
"""


def test_a_worker_that_dies_makes_the_node_refuse_and_exit_for_a_restart(exported, tmp_path, pacs, study):
    """Should the worker die anyway (a fault injected below the per-instance handling), the
    SCP refuses new instances with 0xA700 and the process exits non-zero; restarted (as
    systemd would), it finishes what it had acknowledged."""
    import sys

    node = start_node(exported, tmp_path, pacs, command=[sys.executable, "-c", WORKER_DIES])
    assert storescu(node.port, study[:1]).returncode == 0  # acknowledged: on disk
    wait_for(lambda: any(e["event"] == "fatal" for e in node.events()), 30, "the worker's death")
    r = storescu(node.port, study[1:2])
    assert "0xa700" in (r.stdout + r.stderr).lower() or r.returncode != 0, r.stdout + r.stderr
    assert node.wait(30) == 1 and "busi-node stopped: the work thread died" in node.stderr()
    assert any("busi-node is stopping" in e.get("reason", "") for e in node.events() if e["event"] == "refused")
    node.args[: 3] = [str(BIN / "busi-node")]
    node.start()  # what Restart=on-failure does
    try:
        wait_for(lambda: sop_of(study[0]) in delivered(pacs), 90, "the acknowledged image's SR after the restart")
        assert_the_promise(pacs, tmp_path / "spool", {sop_of(study[0])})
    finally:
        assert node.stop() == 0


def test_chaos_acknowledged_is_delivered_plus_failed(exported, tmp_path, pacs, study):
    """4 associations for 30 s while the destination goes down and up, a poison-pill study UID
    and a full-disk interval are injected and the node is killed (SIGKILL) once and restarted:
    every instance a sender heard 0x0000 for is delivered once or failed with a record."""
    import random

    from pynetdicom import AE

    files = copy_instances(study, tmp_path / "load", 80, "chaos")
    files.append(variant(study[0], tmp_path / "poison", StudyInstanceUID=study_uid_with_letters()))
    cfg = tmp_path / "fast.toml"
    cfg.write_text("retry = 0.5\nretry_max = 2.0\n")
    node = start_node(exported, tmp_path, pacs, extra=("--config", cfg))
    acknowledged, told, stop = set(), [], threading.Event()
    meta = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in files}

    def sender(mine: list[Path]):
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(meta[mine[0]].SOPClassUID, meta[mine[0]].file_meta.TransferSyntaxUID)
        todo = list(mine)
        while not stop.is_set() and todo:
            assoc = ae.associate("127.0.0.1", node.port, ae_title="BUSI")
            while assoc.is_established and todo and not stop.is_set():
                f = todo[0]
                code = getattr(assoc.send_c_store(f), "Status", None)
                told.append(code)
                if code == 0:
                    acknowledged.add(str(meta[f].SOPInstanceUID))
                    todo.pop(0)
                    if random.random() < 0.1:  # a sender that stores it again
                        todo.append(f)
                elif code is None:
                    break
                time.sleep(1.0)
            if assoc.is_established:
                assoc.release()
            stop.wait(0.5)

    random.seed(28)
    threads = [threading.Thread(target=sender, args=(files[i::4],), daemon=True) for i in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()

    def at(s: float) -> None:
        time.sleep(max(0.0, t0 + s - time.monotonic()))

    at(4)
    pacs.stop()          # the destination goes down ...
    at(9)
    node.disk_full(64)   # ... the disk fills ...
    at(13)
    node.disk_full(None)
    at(15)
    pacs.start()         # ... the destination comes back ...
    at(20)
    node.stop(signal.SIGKILL)  # ... the node is killed and restarted
    node.start()
    at(30)
    stop.set()
    for t in threads:
        t.join(30)
    try:
        spool = tmp_path / "spool"
        wait_for(lambda: not list((spool / "incoming").glob("*.dcm")) and not pending(spool),
                 120, "the spool drained")
        time.sleep(2)
        counts = assert_the_promise(pacs, spool, acknowledged)
        counts["told"] = {f"0x{c:04X}" if c is not None else "no answer": told.count(c) for c in set(told)}
        print("chaos:", json.dumps(counts))
        assert counts["acknowledged"] == counts["delivered"] + counts["failed"] and counts["duplicates"] == 0
        assert counts["acknowledged"] >= 40, counts
    finally:
        assert node.stop() == 0
