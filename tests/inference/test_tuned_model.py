"""Using the demo's CoOp as the README's "Use a tuned model" says: the Python block as written, renamed classes at
test time, an ONNX export run by onnxruntime, and a real LitServe server answering concurrent requests."""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import REPO, exit_status
from tuned import demo_test_images, true_class

from dapt_lightning.inference import Classifier, load
from dapt_lightning.inference.export import read_metadata
from dapt_lightning.inference.serving import ClassifierAPI, Rejected

pytestmark = pytest.mark.slow
README = REPO / "README.md"


def readme_blocks(heading: str) -> list[tuple[str, str]]:
    """The fenced code blocks (language, text) of the README section ``### heading``."""
    section = README.read_text().split(f"### {heading}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def dapt(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The console command in a fresh process, in ``cwd``."""
    command = [sys.executable, "-m", "dapt_lightning.cli", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_readme_python_block_classifies_the_demo_images(
    demo_coop: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(demo_coop.parents[3])  # where `make demo` leaves runs/ and data/
    ((language, code),) = readme_blocks("Classify from Python")
    namespace: dict = {}
    exec(compile(code, "README: Classify from Python", "exec"), namespace)  # noqa: S102 - the README's own code
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "['red circle', 'blue cross']"  # as the README's comment says
    assert printed[1].startswith("[('blue cross', 0.99")
    assert printed[2] == "torch.Size([2, 3])" and printed[3] == "torch.Size([2, 64]) torch.Size([24, 64])"

    # The Python call agrees with `dapt test`: the same accuracy on the whole test split.
    clf: Classifier = namespace["clf"]
    images = demo_test_images(demo_coop)
    predictions = clf.predict(images, batch_size=100)
    accuracy = np.mean([label == true_class(image) for label, image in zip(predictions.labels, images, strict=True)])
    tested = json.loads((demo_coop / "metrics.json").read_text())["test"]["test/acc"]
    assert accuracy == pytest.approx(tested, abs=1e-6) and tested == pytest.approx(0.984, abs=0.001)
    # PIL images and paths are the same input; features are L2-normalised.
    pil = [Image.open(path) for path in images[:4]]
    assert torch.allclose(clf.predict(pil).probabilities, clf.predict(images[:4]).probabilities, atol=1e-6)
    assert torch.allclose(clf.encode_images(images[:4]).norm(dim=-1), torch.ones(4), atol=1e-5)


def readme_commands(heading: str) -> list[list[str]]:
    """The ``dapt`` commands of a README section's bash blocks (continued lines joined), as argument lists."""
    commands = []
    for language, block in readme_blocks(heading):
        text = block.replace("\\\n", " ")
        commands += [
            shlex.split(line)[1:] for line in text.splitlines() if language == "bash" and line.startswith("dapt ")
        ]
    return commands


def predictions_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_readme_predict_and_test_commands_run_as_written(demo_coop: Path) -> None:
    work = demo_coop.parents[3]
    (own,) = readme_commands("Classify your own images")
    subset, renamed_test = readme_commands("New class names")
    folder = demo_coop / "predict" / "images"

    # Your own images: a glob over the red classes' folders; the checkpoint's 24 classes.
    result = dapt(own, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    red_images = len(list(work.glob("data/synthetic/images/red_*/*.jpg")))
    assert f"Predictions for {red_images} images: " in result.stdout + result.stderr
    rows = predictions_of(folder / "predictions.csv")
    assert len({row["top1"] for row in rows} - {"red circle", "red square", "red triangle", "red cross"}) <= 1
    assert np.mean([row["top1"] == true_class(Path(row["image"])) for row in rows]) >= 0.95

    # Three classes to choose from, for every image of the red circle's folder.
    result = dapt(subset, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = predictions_of(folder / "predictions.csv")
    assert len(rows) == len(list((work / "data/synthetic/images/red_circle").iterdir()))
    assert {row["top3"] for row in rows} <= {"red circle", "red square", "blue circle"} and "top4" not in rows[0]
    assert np.mean([row["top1"] == "red circle" for row in rows]) >= 0.95

    # Every class renamed ("red circle" as "the red circle"): CoOp's context works with the new names.
    names = load(demo_coop / "checkpoints" / "last.ckpt", device="cpu").classnames
    (work / "renamed.txt").write_text("# the demo's classes, renamed\n" + "".join(f"the {name}\n" for name in names))
    result = dapt(renamed_test, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    tested = demo_coop / "test" / "synthetic"
    record = json.loads((tested / "metrics.json").read_text())
    assert record["settings"]["model"]["init_args"]["classnames"] == "renamed.txt"
    trained = json.loads((demo_coop / "metrics.json").read_text())["test"]["test/acc"]
    accuracy = record["test"]["test/acc"]
    assert abs(accuracy - trained) <= 0.015, (accuracy, trained)  # the README's margin: 1.5 points
    assert (100 * trained, 100 * accuracy) == (pytest.approx(98.4, abs=0.05), pytest.approx(98.6, abs=0.05))
    log = (tested / "run.log").read_text()
    assert "The class texts name 24 of the dataset's 24 classes by the class names given" in log


def test_the_onnx_export_gives_pytorchs_logits(demo_coop: Path, tmp_path: Path) -> None:
    import onnxruntime

    work = demo_coop.parents[3]
    checkpoint = demo_coop / "checkpoints" / "last.ckpt"
    ((_, command),) = readme_blocks("Export to ONNX")
    assert command.split() == ["dapt", "export", "--ckpt_path", "runs/demo/seed1/coop/checkpoints/last.ckpt"] + [
        "--format",
        "onnx",
    ]
    result = dapt(command.split()[1:], cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = checkpoint.with_suffix(".onnx")
    assert "Wrote runs/demo/seed1/coop/checkpoints/last.onnx: input 'images' [N, 3, 64, 64]" in result.stdout

    clf = load(checkpoint, device="cpu")
    metadata = read_metadata(exported)
    assert metadata["classnames"] == clf.classnames and metadata["method"]["class"] == "CoOp"
    assert metadata["preprocessing"]["size"] == 64 and metadata["preprocessing"]["mean"] == list(clf.preprocessing.mean)
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    images = demo_test_images(demo_coop)
    for start in range(0, len(images), 100):  # batches of 100 and, last, 76: the batch size is free
        pixels = torch.stack([clf.transform(Image.open(path).convert("RGB")) for path in images[start : start + 100]])
        (logits,) = session.run(None, {"images": pixels.numpy()})
        reference = clf.logits(pixels).numpy()
        assert np.abs(logits - reference).max() < 1e-4
        assert (logits.argmax(-1) == reference.argmax(-1)).all()

    # Another class list is stored in the graph instead.
    other = tmp_path / "three.onnx"
    code = exit_status(["export", "--ckpt_path", str(checkpoint), "--output", str(other), "--classnames", "a,b,c"])
    assert code == 0 and read_metadata(other)["classnames"] == ["a", "b", "c"]
    session = onnxruntime.InferenceSession(str(other), providers=["CPUExecutionProvider"])
    assert session.run(None, {"images": np.zeros((1, 3, 64, 64), np.float32)})[0].shape == (1, 3)


def test_a_batch_with_a_corrupt_image_answers_each_request(demo_coop: Path) -> None:
    # LitServe's batched loop, as the server runs it: decode each request, one predict for the batch, encode each.
    api = ClassifierAPI(str(demo_coop / "checkpoints" / "last.ckpt"), top_k=3, max_batch_size=8)
    api.setup("cpu")
    images = demo_test_images(demo_coop)[:3]
    requests = [{"image": base64.b64encode(path.read_bytes()).decode()} for path in images]
    requests.insert(1, {"image": base64.b64encode(b"GIF89a, then nothing").decode(), "name": "broken.gif"})
    requests.append({"picture": "wrong key"})
    outputs = api.unbatch(api.predict(api.batch([api.decode_request(request) for request in requests])))
    answers = [api.encode_response(output) for output in outputs]
    assert isinstance(outputs[1], Rejected) and answers[1].status_code == 400
    assert json.loads(answers[1].body)["error"].startswith("the image broken.gif is not in an image format")
    assert answers[4].status_code == 400 and "expected an image" in json.loads(answers[4].body)["error"]
    expected = api.classifier.predict(images).top(3)
    for answer, top in zip([answers[0], answers[2], answers[3]], expected, strict=True):
        assert [(c["class"], pytest.approx(c["probability"], abs=1e-6)) for c in answer["top_k"]] == top


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "dapt-test-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
    body = (
        (head + "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_the_server_answers_concurrent_requests_and_keeps_serving(demo_coop: Path, tmp_path: Path) -> None:
    checkpoint = demo_coop / "checkpoints" / "last.ckpt"
    work = demo_coop.parents[3]
    # The README's two commands, on a free port rather than 8000 (which another program may hold).
    ((_, block),) = readme_blocks("Serve over HTTP")
    serve, curl = (shlex.split(line) for line in block.splitlines())
    assert serve == ["dapt", "serve", "--ckpt_path", "runs/demo/seed1/coop/checkpoints/last.ckpt", "--port", "8000"]
    port = free_port()
    command = [sys.executable, "-m", "dapt_lightning.cli", *serve[1:-1], str(port)]
    command += ["--max_batch_size", "8", "--batch_timeout", "0.05"]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below, after the server
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.read() == b"ok":
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the server did not become healthy in 180 s"
            time.sleep(0.5)

        images = demo_test_images(demo_coop)[::48]  # 12 images of 12 classes
        corrupt = images[0].read_bytes()[:200]
        jobs: list[tuple[str, bytes, str]] = []
        for index, path in enumerate(images):
            data = path.read_bytes()
            if index % 3 == 0:
                jobs.append((str(path), data, "image/jpeg"))
            elif index % 3 == 1:
                jobs.append((str(path), *multipart(path.name, data)))
            else:
                body = json.dumps({"image": base64.b64encode(data).decode()}).encode()
                jobs.append((str(path), body, "application/json"))
        jobs.insert(5, ("corrupt", corrupt, "image/jpeg"))
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            answers = list(pool.map(lambda job: post(f"{base}/predict", job[1], job[2]), jobs))

        expected = load(checkpoint, device="cpu").predict(images).top(5)
        answered = iter(expected)
        for (name, _, _), (status, body) in zip(jobs, answers, strict=True):
            if name == "corrupt":
                assert status == 400 and body["error"].startswith("the image cannot be decoded")
                assert "\n" not in body["error"]
                continue
            top = next(answered)
            assert status == 200, body
            assert body["label"] == top[0][0] == true_class(Path(name))
            assert [c["class"] for c in body["top_k"]] == [c for c, _ in top]
            assert [c["probability"] for c in body["top_k"]] == pytest.approx([p for _, p in top], abs=1e-5)

        status, body = post(f"{base}/predict", images[1].read_bytes(), "image/jpeg")  # still serving
        assert status == 200 and body["label"] == true_class(images[1])
        if shutil.which("curl"):  # the README's curl command
            answer = subprocess.run([arg.replace(":8000", f":{port}") for arg in curl], cwd=work, capture_output=True)
            assert json.loads(answer.stdout)["label"] == "red circle"
    finally:
        server.terminate()  # SIGTERM stops it as Ctrl-C does, with its API and model worker processes
        left = process_group_left(server, timeout=60)
        log.close()
    assert not left, "the server's processes outlived it"
    assert "Server stopped." in (tmp_path / "server.log").read_text()


def process_group_left(process: subprocess.Popen, timeout: float) -> bool:
    """Wait for every process of ``process``'s group (its session) to end; kill what is left after ``timeout``."""
    deadline = time.time() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    while time.time() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    return True
