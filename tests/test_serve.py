"""busi-serve (kserve's v2 REST application under uvicorn) and the remote backend (tritonclient), talked to
over HTTP on loopback as a hospital's tools would: the same answers as the local runtime, the
token, the bounded queue (503), the record endpoint, a server that dies mid-request."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers import ROOT, cli

from busi.runtime import NeedsRoi, Predictor
from busi.runtime.errors import ModelError, ServerError
from busi.serve.process import free_port, running

TOKEN = "s3cret-token"


@contextmanager
def busi_serve(model_dir: Path, *args, token: str | None = None, log: Path | None = None):
    """busi-serve on a free loopback port until the block ends; yields (url, process)."""
    with running(model_dir, "--threads", 2, *args, token=token, log=log) as server:
        yield server.url, server.proc


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with busi_serve(exported, token=TOKEN, log=log) as (url, proc):
        yield url, proc, log


def concurrently(fn, n: int) -> tuple[list, list]:
    """fn() in n threads at once: (results, repr of the exceptions)."""
    results, errors = [], []

    def run():
        try:
            results.append(fn())
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def images(phantoms, n=4):
    return [phantoms / c / f"{c} ({i}).png" for c in ("benign", "malignant", "normal") for i in range(1, n + 1)]


def test_the_remote_predictor_gives_the_local_answers(exported, phantoms, served):
    url, _, _ = served
    local = Predictor(exported / "model.onnx", device="cpu")
    remote = Predictor(server=url, token=TOKEN)
    assert remote.sha256 == local.sha256 and remote.provider == f"remote {url}"
    assert remote.info == local.info  # the contract, read from the server's config and validated
    for mask in ("none", (30, 30, 60, 50), "auto"):
        for img in images(phantoms, 3):
            a, b = local.predict(img, mask), remote.predict(img, mask)
            assert type(a) is type(b), (img, mask, a, b)
            if isinstance(a, NeedsRoi):
                assert b.reason == a.reason and b.lesion_presence == pytest.approx(a.lesion_presence, abs=1e-6)
                continue
            assert b.label == a.label and b.model_sha256 == local.sha256
            for c in a.probabilities:
                assert abs(a.probabilities[c] - b.probabilities[c]) <= 1e-5
            assert b.out_of_distribution == a.out_of_distribution and b.lesion_box == a.lesion_box
    # batches through iter_predict (the server batches them again with other requests)
    got = list(remote.iter_predict(images(phantoms), (30, 30, 60, 50), batch_size=5))
    want = list(local.iter_predict(images(phantoms), (30, 30, 60, 50), batch_size=5))
    assert [g.label for g in got] == [w.label for w in want]
    assert np.allclose([list(g.probabilities.values()) for g in got], [list(w.probabilities.values()) for w in want], atol=1e-5)


def test_busi_infer_against_the_server(exported, phantoms, served, tmp_path):
    url, _, _ = served
    imgs = images(phantoms, 2)
    local = [json.loads(x) for x in cli("busi-infer", *imgs, "--model", exported / "model.onnx", "--roi", "30,30,60,50").stdout.splitlines()]
    r = cli("busi-infer", *imgs, "--server", url, "--roi", "30,30,60,50", "--report", tmp_path / "r.html",
            env={"BUSI_TOKEN": TOKEN})
    remote = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(remote) == len(local) == len(imgs)
    for a, b in zip(local, remote):
        assert b["class"] == a["class"] and b["model_sha256"] == a["model_sha256"] and b["provider"] == f"remote {url}"
        assert max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in a["probabilities"]) <= 1e-5
    assert (tmp_path / "r.html").is_file()
    # without the token: one line naming the server, and no result
    r = cli("busi-infer", imgs[0], "--server", url, check=False, env={"BUSI_TOKEN": ""})
    assert r.returncode == 1 and r.stdout == ""
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and url in err[0] and "401" in err[0] and "token" in err[0], r.stderr
    # a server whose model is not the one expected is refused
    r = cli("busi-infer", imgs[0], "--server", url, "--token", TOKEN, "--expect-sha256", "0" * 64, check=False)
    assert r.returncode == 2 and "expected (--expect-sha256)" in r.stderr and url in r.stderr
    with pytest.raises(ModelError, match="expect-sha256"):
        Predictor(server=url, token=TOKEN, expect_sha256="ab" * 32)
    p = Predictor(server=url, token=TOKEN, expect_sha256=local[0]["model_sha256"].upper())
    assert p.sha256 == local[0]["model_sha256"]


def test_what_a_triton_client_sees(exported, served, tmp_path):
    """Names, tensors and parameters as the Triton repository of the same folder declares them."""
    import tritonclient.http as th
    from google.protobuf import json_format, text_format
    from test_triton import mc

    url, _, _ = served
    c = th.InferenceServerClient(url.removeprefix("http://"))
    h = {"Authorization": f"Bearer {TOKEN}"}
    assert c.is_server_live() and c.is_server_ready()  # the probes need no token
    repo = tmp_path / "repo"
    cli("busi-export", exported, "--triton", repo, "--triton-only")
    for name in ("busi_classifier", "busi_segmenter"):
        want = text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())
        got = json_format.ParseDict(c.get_model_config(name, headers=h), mc.ModelConfig(), ignore_unknown_fields=False)
        assert got.name == want.name and got.platform == want.platform
        for field in ("input", "output"):
            assert sorted((t.name, t.data_type, list(t.dims)) for t in getattr(got, field)) == \
                   sorted((t.name, t.data_type, list(t.dims)) for t in getattr(want, field))
        assert {k: v.string_value for k, v in got.parameters.items()} == {k: v.string_value for k, v in want.parameters.items()}
        meta = c.get_model_metadata(name, headers=h)
        assert sorted(t["name"] for t in meta["inputs"]) == sorted(t.name for t in want.input)
    # the raw classifier over the protocol: batch 3 gives what the file gives
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    S = Predictor(exported / "model.onnx", device="cpu").size
    x = rng.uniform(0, 255, (3, S, S, 3)).astype(np.float32)
    m = np.ones((3, S, S, 1), np.float32)
    ins = [th.InferInput("image", list(x.shape), "FP32"), th.InferInput("mask", list(m.shape), "FP32")]
    ins[0].set_data_from_numpy(x)
    ins[1].set_data_from_numpy(m)
    res = c.infer("busi_classifier", ins, outputs=[th.InferRequestedOutput("probabilities")], headers=h)
    sess = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.allclose(res.as_numpy("probabilities"), sess.run(["probabilities"], {"image": x, "mask": m})[0], atol=1e-5)
    with pytest.raises(Exception, match="401"):
        c.get_model_config("busi_classifier")


def test_the_record_endpoint(exported, phantoms, served):
    """`busi`: PNG bytes and a box in, busi-infer's record out; bad requests get 4xx with one line."""
    url, _, _ = served
    img = phantoms / "malignant" / "malignant (1).png"
    want = json.loads(cli("busi-infer", img, "--model", exported / "model.onnx", "--roi", "30,30,60,50").stdout)

    def post(data: bytes, mask: str | None = "30,30,60,50", token=TOKEN):
        inputs = [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}]
        if mask is not None:
            inputs.append({"name": "mask", "datatype": "BYTES", "shape": [1], "data": [mask]})
        return requests.post(f"{url}/v2/models/busi/infer", json={"inputs": inputs}, timeout=60,
                             headers={"Authorization": f"Bearer {token}"})

    import tritonclient.http as th

    c = th.InferenceServerClient(url.removeprefix("http://"))
    data = np.frombuffer(img.read_bytes(), np.uint8)
    ins = [th.InferInput("image", [len(data)], "UINT8"), th.InferInput("mask", [1], "BYTES")]
    ins[0].set_data_from_numpy(data)
    ins[1].set_data_from_numpy(np.array([b"30,30,60,50"], dtype=object))
    rec = json.loads(c.infer("busi", ins, headers={"Authorization": f"Bearer {TOKEN}"}).as_numpy("record")[0])
    assert rec["class"] == want["class"] and rec["model_sha256"] == want["model_sha256"]
    assert rec["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    assert rec["mask_source"] == want["mask_source"] and rec["lesion_box"] == want["lesion_box"]
    truncated = img.read_bytes()[:400]
    r = post(truncated)
    assert r.status_code == 400 and len(r.json()["error"].splitlines()) == 1, r.text
    assert "<image bytes>" in r.json()["error"]
    r = post(b"not an image at all")
    assert r.status_code == 400 and "<image bytes>" in r.json()["error"]
    r = post(img.read_bytes(), "900,900,10,10")
    assert r.status_code == 400 and "outside" in r.json()["error"]
    r = post(img.read_bytes(), token="wrong")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    r = requests.post(f"{url}/v2/models/busi_classifier/infer", timeout=30, headers={"Authorization": f"Bearer {TOKEN}"},
                      json={"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]})
    assert r.status_code == 400 and "inputs ['image'], expected ['image', 'mask']" in r.json()["error"]


def test_overload_is_503_and_nothing_is_lost(exported, phantoms, tmp_path):
    """A small queue and no batching, 48 requests at once: each gets 200 or 503 with Retry-After,
    nothing else; the remote Predictor, which tries a 503 again, gets every answer; /metrics counts."""
    with busi_serve(exported, "--max-queue", 2, "--max-batch", 1, log=tmp_path / "log") as (url, _):
        S = Predictor(exported / "model.onnx", device="cpu").size
        body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, S, S, 3], "data": [100.0] * (S * S * 3)},
                           {"name": "mask", "datatype": "FP32", "shape": [1, S, S, 1], "data": [1.0] * (S * S)}],
                "outputs": [{"name": "probabilities"}]}
        payload = json.dumps(body)

        def one():
            r = requests.post(f"{url}/v2/models/busi_classifier/infer", data=payload, timeout=120,
                              headers={"Content-Type": "application/json"})
            return r.status_code, r.headers.get("Retry-After"), r.text

        answers, errors = concurrently(one, 48)
        assert not errors and len(answers) == 48  # no lost request
        codes = [a[0] for a in answers]
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        assert all(a[1] is not None and int(a[1]) >= 1 for a in answers if a[0] == 503)
        assert all("requests already wait" in json.loads(a[2])["error"] for a in answers if a[0] == 503)
        # the remote backend waits and tries again: 24 threads, every image answered
        remote = Predictor(server=url)
        img = phantoms / "benign" / "benign (1).png"
        results, failures = concurrently(lambda: remote.predict(img, (30, 30, 60, 50)).label, 24)
        assert not failures and len(results) == 24 and len(set(results)) == 1
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert 'busi_requests_total{code="503",model="busi_classifier"}' in metrics
        assert "busi_batch_size_bucket" in metrics and "busi_queue_depth" in metrics and "busi_request_seconds" in metrics


def test_batching_puts_concurrent_requests_in_one_run(exported, phantoms, tmp_path):
    with busi_serve(exported, "--max-batch", 8, "--max-delay-ms", 50, log=tmp_path / "log") as (url, proc):
        remote = Predictor(server=url)
        img = phantoms / "benign" / "benign (1).png"
        assert not concurrently(lambda: remote.predict(img, (30, 30, 60, 50)), 16)[1]
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        count = sum(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith('busi_batch_size_count{model="busi_classifier"'))
        total = sum(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith('busi_batch_size_sum{model="busi_classifier"'))
        assert total == 16 and count < 16, (count, total)  # 16 images in fewer runs
        # it listens on loopback only
        import psutil

        p = psutil.Process(proc.pid)
        conns = (p.net_connections if hasattr(p, "net_connections") else p.connections)("inet")  # psutil < 6: connections
        listening = [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
        assert listening and all(a.ip == "127.0.0.1" for a in listening), listening
    log = (tmp_path / "log").read_text()
    assert f"busi-serve: {url} serves busi_classifier, busi_segmenter, busi" in log


def test_the_server_dies_mid_request(exported, phantoms, tmp_path):
    """The client names the server in one line; a batch run records each image as failed and goes on."""
    imgs = images(phantoms, 2)
    with busi_serve(exported, log=tmp_path / "log") as (url, proc):
        remote = Predictor(server=url)
        assert remote.predict(imgs[0], (30, 30, 60, 50)).label
        proc.send_signal(signal.SIGSTOP)  # the request below reaches a server that no longer answers...
        box = []

        def call():
            try:
                remote.predict(imgs[1], (30, 30, 60, 50))
            except Exception as e:
                box.append(e)

        t = threading.Thread(target=call)
        t.start()
        time.sleep(1.0)
        proc.kill()  # ...and dies with the request open
        proc.wait()
        t.join(60)
        assert not t.is_alive() and len(box) == 1 and isinstance(box[0], ServerError), box
        msg = str(box[0])
        assert len(msg.splitlines()) == 1 and url in msg and "busi_classifier" in msg
        out = list(remote.iter_predict(imgs, (30, 30, 60, 50), batch_size=2))
        assert len(out) == len(imgs) and all(url in getattr(x, "error", "") for x in out)
    r = cli("busi-infer", *imgs, "--server", url, check=False)
    assert r.returncode == 1 and url in r.stderr  # the server is gone before the first request


def test_kserve_inference_service_example():
    """The InferenceService example: Triton runtime, v2 protocol, on the exported repository."""
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "examples" / "kserve" / "inferenceservice.yaml").read_text()))
    isvc = next(d for d in docs if d["kind"] == "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    assert model["runtime"] == "kserve-tritonserver" and model["storageUri"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = " ".join(model.get("args", []))
    assert "--strict-model-config=true" in args or "--disable-auto-complete-config" in args


def test_a_port_in_use_and_a_missing_model_are_one_line_errors(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = cli("busi-serve", tmp_path, "--port", port, check=False, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen"), r.stderr
    r = cli("busi-serve", tmp_path / "none", "--port", free_port(), check=False, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none'}: not found (export the model folder first: busi-export MODEL_DIR)", r.stderr


def _binary_infer(S: int, rows: int) -> tuple[bytes, dict]:
    """A binary-extension request for busi_classifier (tritonclient's wire format)."""
    x = np.full((rows, S, S, 3), 100, np.float32).tobytes()
    m = np.ones((rows, S, S, 1), np.float32).tobytes()
    head = json.dumps({"inputs": [
        {"name": "image", "datatype": "FP32", "shape": [rows, S, S, 3], "parameters": {"binary_data_size": len(x)}},
        {"name": "mask", "datatype": "FP32", "shape": [rows, S, S, 1], "parameters": {"binary_data_size": len(m)}}],
        "outputs": [{"name": "probabilities"}]}).encode()
    return head + x + m, {"Inference-Header-Content-Length": str(len(head))}


class _Health:
    """GET /v2/health/ready every 50 ms in a thread while the block runs: the slowest answer, failures."""

    def __init__(self, url: str):
        self.url, self.times, self.failures, self._stop = url, [], [], threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                ok = requests.get(f"{self.url}/v2/health/ready", timeout=10).status_code == 200
            except requests.RequestException as e:
                ok = repr(e)
            self.times.append(time.perf_counter() - t)
            if ok is not True:
                self.failures.append(ok)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _closed_after(socks, limit: float) -> list[float]:
    """Seconds until the server closed each socket (EOF or reset), up to `limit`."""
    import select

    start, when = time.perf_counter(), {}
    while len(when) < len(socks) and time.perf_counter() - start < limit:
        readable, _, _ = select.select([s for s in socks if s not in when], [], [], 0.1)
        for s in readable:
            try:
                if s.recv(65536) == b"":
                    when[s] = time.perf_counter() - start
            except OSError:
                when[s] = time.perf_counter() - start
    return [when.get(s, float("inf")) for s in socks]


def test_the_doors_are_closed(exported, tmp_path):
    """Issue 28 over real HTTP, one server with short timeouts: the model repository and v1 are
    404 (the model stays served), bad JSON gets one short line without the body, more rows than
    --max-batch get 413 without holding up a 1-row request, JSON bodies do not stall health
    checks, idle and slow connections are closed after the header/keep-alive timeouts, an idle
    flood beyond --max-connections does not lock out health checks, and a connection beyond it
    when all have requests in progress is answered 503."""
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 and (hard == resource.RLIM_INFINITY or hard >= 4096):
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    with busi_serve(exported, "--header-timeout", 2, "--keep-alive-timeout", 1, "--max-connections", 600,
                    log=tmp_path / "log") as (url, _):
        S = Predictor(exported / "model.onnx", device="cpu").size
        infer = f"{url}/v2/models/busi_classifier/infer"

        def one_line_error(r, status):
            assert r.status_code == status, (r.status_code, r.text[:300])
            assert len(r.text.splitlines()) == 1 and len(r.content) < 400 and r.json()["error"], r.text[:300]

        # the model repository extension and v1 are not there; the model stays ready and answers
        for path in ("repository/models/busi_classifier/unload", "repository/models/busi_classifier/load",
                     "repository/models/busi/unload", "repository/index"):
            one_line_error(requests.post(f"{url}/v2/{path}", timeout=10), 404)
        one_line_error(requests.post(f"{url}/v1/models/busi_classifier:predict", json={"instances": [[1]]}, timeout=10), 404)
        one_line_error(requests.get(f"{url}/v1/models/busi_classifier", timeout=10), 404)
        assert requests.get(f"{url}/v2/models/busi_classifier/ready", timeout=10).status_code == 200
        body1, head1 = _binary_infer(S, 1)
        assert requests.post(infer, data=body1, headers=head1, timeout=30).status_code == 200
        # malformed and invalid JSON: one short line that does not echo the body (FastAPI's 422 did)
        r = requests.post(infer, data=b'{"inputs": [' + b"x" * (1 << 20), timeout=30)
        one_line_error(r, 400)
        assert "xxxx" not in r.text and "JSON" in r.text
        r = requests.post(infer, json={"inputs": [{"name": "image", "shape": [1], "data": ["SECRET" * 1000]}]}, timeout=30)
        one_line_error(r, 400)
        assert "SECRET" not in r.text and "datatype" in r.text

        # 600 rows: 413 at once, and a 1-row request meanwhile waits no longer than usual
        alone = []
        for _ in range(5):
            t = time.perf_counter()
            requests.post(infer, data=body1, headers=head1, timeout=30)
            alone.append(time.perf_counter() - t)
        body600, head600 = _binary_infer(S, 600)
        big = {}

        def post_big():
            t = time.perf_counter()
            big["r"] = requests.post(infer, data=body600, headers=head600, timeout=120)
            big["s"] = time.perf_counter() - t

        thread = threading.Thread(target=post_big)
        thread.start()
        during = []
        while thread.is_alive() or len(during) < 3:
            t = time.perf_counter()
            assert requests.post(infer, data=body1, headers=head1, timeout=30).status_code == 200
            during.append(time.perf_counter() - t)
        thread.join()
        one_line_error(big["r"], 413)
        assert "600 rows" in big["r"].json()["error"] and "--max-batch 8" in big["r"].json()["error"]
        assert max(during) < max(0.5, 5 * float(np.median(alone))), (during, alone, big["s"])

        # JSON: a 4 MB body (under the 4 MiB default) is parsed in a worker thread; a 60 MB one
        # (which stalled every request for seconds) is refused before it is read. Health answers
        # within 1 s throughout.
        def json_body(megabytes):
            n = int(megabytes * 1e6 / 17)
            return (f'{{"inputs": [{{"name": "image", "datatype": "FP32", "shape": [1, {S}, {S}, 3], "data": ['
                    + ",".join(["123.45678901234"] * n)
                    + f']}}, {{"name": "mask", "datatype": "FP32", "shape": [1, {S}, {S}, 1], "data": [1]}}]}}').encode()

        for mb, status in ((4, 400), (60, 413)):
            payload = json_body(mb)
            with _Health(url) as health:
                time.sleep(0.2)
                r = requests.post(infer, data=payload, headers={"Content-Type": "application/json"}, timeout=120)
                time.sleep(0.2)
            one_line_error(r, status)
            assert not health.failures and max(health.times) < 1.0, (mb, max(health.times), health.failures)
        del payload

        # 500 connections that send nothing: closed after the 2 s header timeout; health answers throughout
        with _Health(url) as health:
            idle = [socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) for _ in range(500)]
            closed = _closed_after(idle, 10)
        for s in idle:
            s.close()
        assert all(1.8 < t < 5 for t in closed), sorted(closed)[:3] + sorted(closed)[-3:]
        assert not health.failures and max(health.times) < 1.0, (max(health.times), health.failures)

        port = int(url.rsplit(":", 1)[1])
        # a request trickled byte by byte (slowloris) is closed at the header timeout too
        slow = socket.create_connection(("127.0.0.1", port))
        start, closed_at = time.perf_counter(), None
        for c in b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                slow.send(bytes([c]))
            except OSError:
                closed_at = time.perf_counter() - start
                break
            if _closed_after([slow], 0.1)[0] < 1:  # waits 0.1 s for the server to close it
                closed_at = time.perf_counter() - start
                break
        slow.close()
        assert closed_at is not None and 1.8 < closed_at < 5, closed_at
        # keep-alive: a connection idle after its response is closed after 1 s
        ka = socket.create_connection(("127.0.0.1", port))
        ka.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ka.recv(65536).startswith(b"HTTP/1.1 200")
        assert 0.8 < _closed_after([ka], 10)[0] < 4
        ka.close()

        # the connection limit (600): 700 idle connections cannot lock out a health check (the
        # longest-waiting one makes room); 600 requests whose body never comes fill the server,
        # one more is answered 503, and the body timeout (2 s, as for headers) frees them all
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(700)]
        time.sleep(0.2)
        assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
        assert sum(t < 1 for t in _closed_after(idle, 0.5)) >= 100  # the first ones, closed to make room
        for s in idle:
            s.close()
        start = time.perf_counter()
        stuck = [socket.create_connection(("127.0.0.1", port)) for _ in range(600)]
        for s in stuck:
            s.sendall(b"POST /v2/models/busi_classifier/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        assert time.perf_counter() - start < 1.5, "too slow to fill the server within its 2 s timeouts"
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(5)
        answer = extra.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503") and b"requests in progress" in answer, answer[:200]
        extra.close()
        assert all(t < 4 for t in _closed_after(stuck, 10))
        for s in stuck:
            s.close()
        assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
    log = (tmp_path / "log").read_text()
    assert "Too many open files" not in log and "Traceback" not in log, log[-2000:]


def test_listening_beyond_loopback_needs_a_token(tmp_path):
    """--host 0.0.0.0 without a token: exit 2 and one line, before anything loads; a token or
    --insecure-no-token gets past that check (to the missing model here)."""
    port = free_port()
    r = cli("busi-serve", tmp_path / "none", "--host", "0.0.0.0", "--port", port, check=False, timeout=120, env={"BUSI_TOKEN": ""})
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "--insecure-no-token" in r.stderr and "token" in r.stderr
    r = cli("busi-serve", tmp_path / "none", "--host", "0.0.0.0", "--port", port, "--insecure-no-token", check=False,
            timeout=120, env={"BUSI_TOKEN": ""})
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'none'}: not found"), r.stderr
    from busi.runtime.errors import UsageError
    from busi.serve.app import check_exposure

    check_exposure("0.0.0.0", TOKEN)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(host, None)
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        with pytest.raises(UsageError, match="--insecure-no-token"):
            check_exposure(host, None)
