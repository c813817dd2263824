"""A client of the Alertmanager v2 API: read the alerts, create, read and expire silences.

Four calls, as ``api/v2/openapi.yaml`` of prometheus/alertmanager defines them:
``GET /api/v2/alerts`` (``active``, ``silenced``, ``inhibited`` query flags),
``POST /api/v2/silences`` (a postableSilence; answers ``{"silenceID": ...}``),
``GET /api/v2/silence/{id}`` (a gettableSilence, ``status.state`` active, pending or expired)
and ``DELETE /api/v2/silence/{id}`` (expires it; Alertmanager keeps it, expired).

Every failure (connection refused, timeout, an HTTP status, a reply that is not the JSON the
spec describes) is one :class:`AlertmanagerError` line naming the server and the call. Header
values come from the environment at request time and appear in no message. Knows nothing of
Textual nor of the console's alerts: it returns the records below.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from backends.engines import describe_http_error
from backends.providers import parse_retry_after
from backends.urls import display_url

MAX_REPLY_BYTES = 64 * 2**20  # a reply past this is a misdirected URL, not a list of alerts
SILENCE_STATES = ("active", "pending", "expired")


class AlertmanagerError(Exception):
    """One call failed; one line naming the server, the call and what failed."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, when the server answered
        self.retry_after_s = retry_after_s  # the scheduler waits at least this long


@dataclass(frozen=True)
class AmAlert:
    """One alert as Alertmanager holds it (a gettableAlert)."""

    fingerprint: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str  # RFC 3339, as the server wrote it
    ends_at: str
    state: str  # unprocessed, active or suppressed
    silenced_by: tuple[str, ...] = ()
    inhibited_by: tuple[str, ...] = ()

    @property
    def suppressed(self) -> bool:
        return self.state == "suppressed"


@dataclass(frozen=True)
class Matcher:
    """A silence matcher: ``name`` equal to (or, ``is_regex``, fully matching) ``value``;
    ``is_equal`` false negates it."""

    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "isRegex": self.is_regex,
            "isEqual": self.is_equal,
        }

    def __str__(self) -> str:
        op = (
            ("=~" if self.is_equal else "!~") if self.is_regex else ("=" if self.is_equal else "!=")
        )
        return f"{self.name}{op}{json.dumps(self.value)}"


@dataclass(frozen=True)
class Silence:
    """A silence as Alertmanager holds it (a gettableSilence)."""

    id: str
    state: str  # active, pending or expired
    matchers: tuple[Matcher, ...]
    starts_at: str
    ends_at: str
    created_by: str
    comment: str


def rfc3339(at: float) -> str:
    """A Unix time as the RFC 3339 UTC timestamp Alertmanager reads (milliseconds)."""
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def parse_time(text: str) -> float | None:
    """An RFC 3339 timestamp as Unix time; None when it is not one."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError):
        return None


def silence_body(
    matchers: Sequence[Matcher], starts_at: float, ends_at: float, created_by: str, comment: str
) -> dict[str, object]:
    """The postableSilence that creates a silence (no ``id``: a new one, not an update)."""
    return {
        "matchers": [m.as_json() for m in matchers],
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(ends_at),
        "createdBy": created_by,
        "comment": comment,
    }


class AlertmanagerClient:
    """One Alertmanager (or a cluster behind one URL), reached over a shared httpx client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        *,
        timeout_s: float = 5.0,
        header_env: Mapping[str, str] | None = None,
    ) -> None:
        self._http = http
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.header_env = dict(header_env or {})  # header name -> environment variable

    @property
    def name(self) -> str:
        """The URL as messages show it: never with a user or password in it."""
        return display_url(self.url)

    def endpoint(self, path: str) -> str:
        """The full URL of an API path such as ``/api/v2/silences``."""
        return f"{self.url}{path}"

    def silence_path(self, silence_id: str) -> str:
        return f"/api/v2/silence/{quote(silence_id, safe='')}"

    def headers(self) -> dict[str, str]:
        """The configured headers, read from the environment now."""
        headers = {}
        for header, variable in self.header_env.items():
            value = os.environ.get(variable)
            if not value:
                raise AlertmanagerError(
                    f"alertmanager {self.name}: environment variable {variable} is not set "
                    f"(the {header} header)"
                )
            headers[header] = value
        return headers

    # -- the calls

    async def alerts(
        self, *, active: bool = True, silenced: bool = False, inhibited: bool = False
    ) -> list[AmAlert]:
        """The alerts Alertmanager holds that have not ended; by default only those that
        notify (neither silenced nor inhibited)."""
        params = {
            "active": _flag(active),
            "silenced": _flag(silenced),
            "inhibited": _flag(inhibited),
        }
        reply = await self._call("GET", "/api/v2/alerts", params=params)
        what = "GET /api/v2/alerts"
        if not isinstance(reply, list):
            raise self._malformed(what, "not a list of alerts")
        try:
            return [_alert(item) for item in reply]
        except (KeyError, TypeError, ValueError) as exc:
            raise self._malformed(what, _one_line(exc)) from None

    async def create_silence(self, body: Mapping[str, object]) -> str:
        """POST a silence (see :func:`silence_body`); its id."""
        reply = await self._call("POST", "/api/v2/silences", json_body=body)
        silence_id = reply.get("silenceID") if isinstance(reply, dict) else None
        if not isinstance(silence_id, str) or not silence_id:
            raise self._malformed("POST /api/v2/silences", "no silenceID in the reply")
        return silence_id

    async def silence(self, silence_id: str) -> Silence:
        path = self.silence_path(silence_id)
        reply = await self._call("GET", path)
        try:
            return _silence(reply)
        except (KeyError, TypeError, ValueError) as exc:
            raise self._malformed(f"GET {path}", _one_line(exc)) from None

    async def expire_silence(self, silence_id: str) -> None:
        """DELETE the silence: Alertmanager ends it now and keeps it as expired."""
        await self._call("DELETE", self.silence_path(silence_id), want_json=False)

    # -- plumbing

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, object] | None = None,
        want_json: bool = True,
    ) -> Any:
        what = f"{method} {path}"
        where = f"alertmanager {self.name}: {what}"
        headers = self.headers()
        body = bytearray()
        try:
            async with self._http.stream(
                method,
                self.endpoint(path),
                params=params,
                json=json_body,
                headers=headers,
                timeout=self.timeout_s,
            ) as response:
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_REPLY_BYTES:
                        raise AlertmanagerError(f"{where}: reply over {MAX_REPLY_BYTES} bytes")
        except httpx.TimeoutException:
            raise AlertmanagerError(f"{where}: no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise AlertmanagerError(f"{where}: {describe_http_error(exc)}") from None
        status = response.status_code
        if not 200 <= status < 300:
            retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
            # Alertmanager's errors are a JSON string ("silence invalid: ..."): say it.
            reason = _error_text(bytes(body))
            raise AlertmanagerError(
                f"{where}: HTTP {status}" + (f": {reason}" if reason else ""),
                status=status,
                retry_after_s=retry_after,
            )
        if not want_json:
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise AlertmanagerError(f"{where}: the reply is not JSON") from None

    def _malformed(self, what: str, why: str) -> AlertmanagerError:
        return AlertmanagerError(f"alertmanager {self.name}: {what}: malformed reply: {why}")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _labels(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{what} is not a mapping")
    return {str(k): str(v) for k, v in value.items()}


def _strings(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TypeError(f"{what} is not a list")
    return tuple(str(v) for v in value)


def _alert(item: object) -> AmAlert:
    if not isinstance(item, dict):
        raise TypeError("an alert is not an object")
    fingerprint = item["fingerprint"]
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ValueError("an alert without a fingerprint")
    status = item.get("status") or {}
    if not isinstance(status, dict):
        raise TypeError("an alert's status is not an object")
    return AmAlert(
        fingerprint=fingerprint,
        labels=_labels(item["labels"], "an alert's labels"),
        annotations=_labels(item.get("annotations"), "an alert's annotations"),
        starts_at=str(item.get("startsAt", "")),
        ends_at=str(item.get("endsAt", "")),
        state=str(status.get("state", "active")),
        silenced_by=_strings(status.get("silencedBy"), "silencedBy"),
        inhibited_by=_strings(status.get("inhibitedBy"), "inhibitedBy"),
    )


def _silence(item: object) -> Silence:
    if not isinstance(item, dict):
        raise TypeError("the silence is not an object")
    state = item["status"]["state"]
    if state not in SILENCE_STATES:
        raise ValueError(f"unknown silence state {state!r}")
    matchers = tuple(
        Matcher(
            name=str(m["name"]),
            value=str(m["value"]),
            is_regex=bool(m.get("isRegex", False)),
            is_equal=bool(m.get("isEqual", True)),
        )
        for m in item["matchers"]
    )
    return Silence(
        id=str(item["id"]),
        state=state,
        matchers=matchers,
        starts_at=str(item.get("startsAt", "")),
        ends_at=str(item.get("endsAt", "")),
        created_by=str(item.get("createdBy", "")),
        comment=str(item.get("comment", "")),
    )


def _error_text(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = text
    if isinstance(decoded, dict):  # e.g. go-swagger's {"code": 422, "message": "..."}
        decoded = decoded.get("message") or decoded.get("error") or text
    return _one_line(decoded)


def _one_line(text: object, limit: int = 160) -> str:
    lines = str(text).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
