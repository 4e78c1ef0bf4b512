"""REST transport: POST /segment, GET /v1/models, GET /readyz (httpx)."""

from __future__ import annotations

from typing import Any

import httpx

from client._errors import DanetClientError
from client._inputs import Image, Options
from client._types import ClassStat, ModelSummary, Segmentation


def _error_from_response(response: httpx.Response) -> DanetClientError:
    code: str | None = None
    message = response.text.strip()[:500] or response.reason_phrase
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = str(error.get("code") or "") or None
            message = str(error.get("message") or message)
        elif isinstance(error, str):
            message = error
        elif "detail" in body:
            message = str(body["detail"])
    return DanetClientError(f"HTTP {response.status_code}: {message}", code=code, status=response.status_code)


def _stats(items: Any) -> tuple[ClassStat, ...]:
    return tuple(
        ClassStat(int(s["id"]), str(s["name"]), int(s["pixels"]), float(s["fraction"])) for s in items or ()
    )


class RestTransport:
    def __init__(self, url: str, *, api_key: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        # bytes: a key outside ASCII goes as its UTF-8 bytes, as the server compares it
        headers = {b"Authorization": f"Bearer {api_key}".encode()} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise DanetClientError(
                f"cannot reach the server at {self.url}: {exc}", code="unreachable"
            ) from None
        except httpx.TimeoutException as exc:
            raise DanetClientError(f"request to {self.url}{path} timed out: {exc}", code="timeout") from None
        except httpx.HTTPError as exc:
            raise DanetClientError(f"request to {self.url}{path} failed: {exc}", code="transport") from None
        return response

    def segment(self, image: Image, options: Options) -> Segmentation:
        params: dict[str, Any] = {"format": options.format}
        if options.model:
            params["model"] = options.model
        if options.alpha is not None:
            params["alpha"] = options.alpha
        if options.mode:
            params["mode"] = options.mode
        if options.scales:
            params["scales"] = ",".join(f"{s:g}" for s in options.scales)
        if options.flip is not None:
            params["flip"] = "true" if options.flip else "false"
        if options.max_size is not None:
            params["max_size"] = options.max_size
        if options.tta:
            params["tta"] = options.tta
        for name in ("base_size", "crop_size", "stride"):
            size = getattr(options, name)
            if size:
                params[name] = "x".join(str(v) for v in size)
        response = self._request(
            "POST",
            "/segment",
            params=params,
            content=image.as_encoded(),
            headers={"Content-Type": "application/octet-stream"},
        )
        if response.status_code != 200:
            raise _error_from_response(response)
        model = response.headers.get("x-danet-model", "")
        provider = response.headers.get("x-danet-provider") or None
        if options.format == "json":
            try:
                document = response.json()
            except ValueError:
                raise DanetClientError(
                    "the server sent a JSON reply that does not parse", code="bad_reply"
                ) from None
            return Segmentation(
                format="json",
                model=str(document.get("model", model)),
                height=int(document.get("height", 0)),
                width=int(document.get("width", 0)),
                provider=document.get("provider", provider),
                stats=_stats(document.get("classes")),
                timings_ms={k: float(v) for k, v in (document.get("timings") or {}).items()},
                document=document,
            )
        height, width = _png_size(response.content)
        return Segmentation(
            format=options.format,
            model=model,
            height=height,
            width=width,
            provider=provider,
            png=response.content,
        )

    def list_models(self) -> list[ModelSummary]:
        response = self._request("GET", "/v1/models")
        if response.status_code != 200:
            raise _error_from_response(response)
        return [
            ModelSummary(
                name=str(m["name"]),
                classes=tuple(m.get("classes", ())),
                palette=tuple((int(c[0]), int(c[1]), int(c[2])) for c in m.get("palette", ())),
                provider=m.get("provider"),
            )
            for m in response.json().get("models", [])
        ]

    def ready(self) -> bool:
        return self._request("GET", "/readyz").status_code == 200

    def close(self) -> None:
        self._http.close()


def _png_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk, without decoding it."""
    if len(data) < 24 or not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise DanetClientError("the server's reply is not a PNG image", code="bad_reply")
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    return height, width
