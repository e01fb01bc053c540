"""``dapt serve``: a tuned model behind an HTTP endpoint, with LitServe (Lightning's serving library).

``POST /predict`` takes one image, as the raw request body (``curl --data-binary @cat.jpg``), as a multipart form
file (``curl -F image=@cat.jpg``) or as JSON ``{"image": "<base64>"}``, and answers JSON with the top classes.
Requests that arrive together are classified in one batch. An image that cannot be decoded gets a 400 answer with a
one-line reason; the requests batched with it are answered as usual, and the server keeps serving. ``GET /health``
answers ``ok`` once the model is loaded.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from typing import Any

import litserve as ls
import torch
from PIL import Image, UnidentifiedImageError
from starlette.requests import Request
from starlette.responses import JSONResponse

from dapt_lightning.inference.classifier import Classifier, load

API_PATH = "/predict"
MAX_IMAGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Rejected:
    """A request that cannot be classified, and why (answered with a 400)."""

    reason: str


class ImageUploads:
    """ASGI middleware: an image POSTed to the endpoint as raw bytes or as a multipart file becomes the JSON
    ``{"image": base64, "name": filename}`` that LitServe passes to its worker (it forwards only JSON and forms,
    and a form's files cannot cross to the worker process)."""

    def __init__(self, app: Any, path: str = API_PATH) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if content_type.startswith("application/json"):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        name = None
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            upload = next((value for value in form.values() if hasattr(value, "read")), None)
            if upload is None:
                await JSONResponse({"error": "the form holds no file: send the image as a file field"}, 400)(
                    scope, receive, send
                )
                return
            data, name = await upload.read(), upload.filename
        else:
            data = await request.body()
        if len(data) > MAX_IMAGE_BYTES:
            await JSONResponse({"error": f"image larger than {MAX_IMAGE_BYTES} bytes"}, 413)(scope, receive, send)
            return
        body = json.dumps({"image": base64.b64encode(data).decode("ascii"), "name": name}).encode()
        replaced = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        replaced += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": replaced}, replay, send)


def decode_image(request: Any) -> Image.Image | Rejected:
    """The RGB image a request carries, or why there is none (one line)."""
    if not isinstance(request, dict) or not isinstance(request.get("image"), str):
        return Rejected('expected an image: the request body, a multipart file, or JSON {"image": "<base64>"}')
    try:
        data = base64.b64decode(request["image"], validate=True)
    except (binascii.Error, ValueError):
        return Rejected("the JSON 'image' field is not base64")
    if not data:
        return Rejected("the request holds no image (an empty body)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        return Rejected(f"{_named(request)} is not in an image format that can be read (JPEG, PNG, WebP, ...)")
    except (OSError, SyntaxError, ValueError) as error:
        reason = " ".join(str(error).split())
        return Rejected(f"{_named(request)} cannot be decoded ({type(error).__name__}: {reason}): corrupt or truncated")


def _named(request: dict[str, Any]) -> str:
    return f"the image {request['name']}" if request.get("name") else "the image"


class ClassifierAPI(ls.LitAPI):
    """The LitServe API of a checkpoint: the model is loaded in each worker's ``setup``.

    Args:
        checkpoint: the ``.ckpt`` file.
        top_k: classes per answer.
        classnames: the classes to choose from (None: the checkpoint's).
        pretrained: where the CLIP weights file it was trained on is now (when it moved).
        max_batch_size, batch_timeout: LitServe's batching: at most this many requests per forward pass, waiting at
            most this many seconds for them.
    """

    def __init__(
        self,
        checkpoint: str,
        top_k: int = 5,
        classnames: list[str] | str | None = None,
        pretrained: str | None = None,
        max_batch_size: int = 16,
        batch_timeout: float = 0.01,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=API_PATH)
        if top_k < 1:
            raise ValueError(f"--top_k must be >= 1, got {top_k}")
        self.checkpoint, self.top_k, self.classnames, self.pretrained = checkpoint, top_k, classnames, pretrained
        self.classifier: Classifier | None = None

    def setup(self, device: str) -> None:
        self.classifier = load(self.checkpoint, device=device, classnames=self.classnames, pretrained=self.pretrained)

    # Unannotated: LitServe reads the endpoint's parameter type from this signature (none: the HTTP request).
    def decode_request(self, request) -> torch.Tensor | Rejected:  # noqa: ANN001
        image = decode_image(request)
        return image if isinstance(image, Rejected) else self.classifier.transform(image)

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs  # decoded images and rejections together: predict keeps them apart

    def predict(self, inputs: list[Any]) -> list[Any]:
        images = [item for item in inputs if not isinstance(item, Rejected)]
        outputs: list[Any] = []
        if images:
            pixels = torch.stack(images).to(self.classifier.device)
            probabilities = self.classifier.logits(pixels).float().softmax(-1).cpu()
            values, indices = probabilities.topk(min(self.top_k, len(self.classifier.classnames)), dim=-1)
            outputs = list(zip(indices.tolist(), values.tolist(), strict=True))
        answers = iter(outputs)
        return [item if isinstance(item, Rejected) else next(answers) for item in inputs]

    def unbatch(self, outputs: list[Any]) -> list[Any]:
        return outputs

    def encode_response(self, output: Any) -> Any:
        if isinstance(output, Rejected):
            # A response of its own (not an HTTPException, which would fail every request of the batch).
            return JSONResponse({"error": output.reason}, status_code=400)
        names = self.classifier.classnames
        top = [{"class": names[i], "probability": p} for i, p in zip(*output, strict=True)]
        return {"label": top[0]["class"], "probability": top[0]["probability"], "top_k": top}


def build_server(api: Any, accelerator: str = "auto", workers: int = 1, timeout: float = 60) -> Any:
    """The LitServer around ``api``, with the image-upload middleware."""
    return ls.LitServer(
        api,
        accelerator=accelerator,
        devices=1,
        workers_per_device=workers,
        timeout=timeout,
        middlewares=[(ImageUploads, {"path": API_PATH})],
    )
