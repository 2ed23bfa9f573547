"""One exchange through the debugging proxy, watched: the tee into the trace view, the
recording, the live lines, and the summary (:class:`ExchangeSummary`).

Edge layer (part of :mod:`qwen_sse.debugproxy`): it writes to the given text output and
recording file; it never reads the network. What it is handed is what the application
received (after any fault), and it sees it only through the exchange's
:class:`~qwen_sse.debugproxy.secrets.Secrets`: the credentials are masked in everything it
shows, decodes, keeps or records.

Which bodies are decoded: a response of a chat endpoint (the protocol chosen by the request
path) with a success status, unless it is a JSON document (a non-streaming answer: only an
error it carries is flagged). Error statuses show their code and message.
"""

from __future__ import annotations

import io
import json
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, TextIO

from qwen_sse.chat import ChatResult
from qwen_sse.chunks import Usage
from qwen_sse.debugproxy.secrets import Secrets, StreamMask
from qwen_sse.errors import QwenSSEError
from qwen_sse.limiter import Outcome
from qwen_sse.protocols import WireProtocol
from qwen_sse.recording import Recorder
from qwen_sse.trace import Anomaly, TraceView

__all__ = ["ExchangeSummary", "ExchangeView", "request_object"]

# How much of an error body (or a JSON answer) is kept to read its error from.
_ERROR_BODY_MAX_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ExchangeSummary:
    """What one exchange did, as the application saw it. Times are milliseconds since the
    proxy sent the request upstream (None: never happened).

    ``number`` counts exchanges from 1; ``path`` is the request path and query with any
    credential masked; ``protocol`` is "" for a path that is no chat endpoint; ``status``
    the status the application received (None when it went away first); ``fault`` the
    injected fault as JSON ("" for none); ``outcome`` one of ``ok`` (ended as the upstream
    ended it, possibly stalled by a fault), ``fault`` (the fault refused, cut or ended it),
    ``upstream-broke`` (the upstream's connection broke), ``no-upstream`` (the proxy could
    not reach it and answered 502), ``client-gone`` (the application went away first),
    ``refused`` (the proxy refused the request); ``error`` says what went wrong, if
    anything; ``kind`` is ``stream``, ``json`` (a whole JSON answer), ``error`` (an error
    status) or ``other``; ``complete`` is the decoded answer's completeness (None unless
    ``kind`` is ``stream``); ``result`` the decoded answer (None unless a stream was
    decoded); ``bytes`` the body bytes the application received; ``events`` the events
    decoded; ``gap_*_ms`` the inter-token gap percentiles (None with fewer than two
    tokens); ``anomalies`` everything the trace view flags, plus ``tee-limit`` when the body
    outgrew the proxy's ``max_stream_bytes`` (the rest was forwarded, not watched);
    ``recording`` the recording's path.
    """

    number: int
    method: str
    path: str
    protocol: str
    model: str
    status: int | None
    request_id: str
    fault: str
    outcome: str
    error: str
    kind: str
    complete: bool | None
    result: ChatResult | None
    head_ms: float | None
    first_byte_ms: float | None
    first_token_ms: float | None
    gap_p50_ms: float | None
    gap_p90_ms: float | None
    gap_p99_ms: float | None
    gap_max_ms: float | None
    bytes: int
    events: int
    duration_ms: float
    anomalies: tuple[Anomaly, ...]
    recording: str | None

    @property
    def usage(self) -> Usage | None:
        """The usage the stream reported, if it was decoded and reported one."""
        return None if self.result is None else self.result.usage

    def line(self) -> str:
        """The summary as one line of the proxy's output."""
        parts = [f"[#{self.number}] {self.status if self.status is not None else '-'}"]
        if self.protocol:
            parts.append(f" {self.protocol} {self.model or '-'}")
        parts.append(f" {_state(self)}")
        figures = [f"{self.bytes} B"]
        if self.kind == "stream":
            figures.insert(0, f"{self.events} events")
        for label, value in (
            ("head", self.head_ms),
            ("first byte", self.first_byte_ms),
            ("first token", self.first_token_ms),
        ):
            if value is not None:
                figures.append(f"{label} {value:.1f} ms")
        if self.gap_p50_ms is not None:
            figures.append(
                f"gaps p50 {self.gap_p50_ms:.1f} p90 {self.gap_p90_ms:.1f}"
                f" p99 {self.gap_p99_ms:.1f} max {self.gap_max_ms:.1f} ms"
            )
        usage = self.usage
        if usage is not None:
            figures.append(
                f"usage {usage.prompt_tokens}+{usage.completion_tokens}={usage.total_tokens}"
            )
        if self.request_id:
            figures.append(f"request id {self.request_id}")
        kinds = sorted({anomaly.kind for anomaly in self.anomalies})
        figures.append(f"anomalies: {', '.join(kinds) if kinds else 'none'}")
        return "".join(parts) + ": " + ", ".join(figures)


def _state(summary: ExchangeSummary) -> str:
    if summary.error:
        state = summary.error
    elif summary.kind == "stream":
        state = "complete" if summary.complete else "incomplete"
    else:
        state = summary.kind
    if summary.fault and "proxy's fault" not in state:
        state += " (the proxy's fault)"
    return state


class _Prefixed(io.StringIO):
    """Hands each whole line written to it to ``out``, prefixed (so that the trace views of
    concurrent exchanges can be told apart)."""

    def __init__(self, out: TextIO, prefix: str) -> None:
        super().__init__()
        self._target = out
        self._prefix = prefix
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._target.write(f"{self._prefix}{line}\n")
        return len(text)

    def flush(self) -> None:
        self._target.flush()


class ExchangeView:
    """Watches one exchange: ``request``, then ``response`` (unless none came), ``data``
    for every piece of body forwarded to the application, then ``end`` once, which returns
    the :class:`ExchangeSummary`.

    ``protocol`` is the chat protocol of the request path (None: no chat endpoint); ``out``
    where the
    live lines go (None: nowhere); ``verbose`` adds the trace view's every line;
    ``recording`` a file to write the exchange's recording to; ``max_stream_bytes`` how
    much of a body is watched and recorded (None: all).
    """

    def __init__(
        self,
        number: int,
        *,
        method: str,
        path: str,
        protocol: WireProtocol | None,
        secrets: Secrets,
        out: TextIO | None,
        verbose: bool = False,
        recording: IO[str] | None = None,
        recording_path: str | None = None,
        stall_ms: float = 2000.0,
        max_stream_bytes: int | None = None,
        fault: str = "",
    ) -> None:
        self._number = number
        self._method = method
        self._path = secrets.text(path)
        self._protocol = protocol
        self._secrets = secrets
        self._mask: StreamMask = secrets.stream()
        self._out = out
        self._fault = fault
        self._model = ""
        self._view: TraceView | None = None
        if protocol is not None:
            trace_out = _Prefixed(out, f"[#{number}] ") if verbose and out is not None else None
            self._view = TraceView(trace_out, protocol=protocol, stall_ms=stall_ms)
        self._shown_anomalies = 0
        self._verbose = verbose and out is not None
        self._recorder: Recorder | None = None
        self._recording = recording
        self._recording_path = recording_path
        if recording is not None:
            self._recorder = Recorder(recording, protocol=protocol.name if protocol else "")
        self._max_stream_bytes = max_stream_bytes
        self._extra: list[Anomaly] = []
        self._status: int | None = None
        self._content_type = ""
        self._request_id = ""
        self._head_ms: float | None = None
        self._first_byte_ms: float | None = None
        self._last_at_s = 0.0
        self._bytes = 0
        self._watched_bytes = 0
        self._kind = "other"
        self._body_head = bytearray()
        self._decoding = False
        self.ended = False

    # -- the exchange ---------------------------------------------------------------------

    def request(
        self,
        *,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        request_body: Mapping[str, Any] | None = None,
    ) -> None:
        """The request as forwarded upstream (``url``, ``headers`` and ``body`` as sent,
        unmasked); ``request_body`` is ``body`` read as a JSON object, if the caller has read
        it already (else it is read here, when the request is a chat protocol's)."""
        protocol = self._protocol
        if protocol is not None:
            if request_body is None:
                request_body = request_object(body)
            if request_body is not None:
                self._model = protocol.facts(request_body).model
        secrets = self._secrets
        shown_url = secrets.text(url)
        shown_headers = secrets.request_headers(headers)
        shown_body = secrets.data(body)
        what = f"{self._protocol.name}, {self._model or 'no model'}" if self._protocol else "-"
        fault = f"; fault {self._fault}" if self._fault else ""
        self._say(f"[#{self._number}] {self._method} {self._path} ({what}{fault})")
        if self._view is not None:
            self._view.request(
                method=self._method, url=shown_url, headers=shown_headers, body=shown_body
            )
        recorder = self._recorder
        if recorder is not None:
            self._record(
                lambda: recorder.request(
                    method=self._method, url=shown_url, headers=shown_headers, body=shown_body
                )
            )

    def response(self, *, status: int, headers: Mapping[str, str], at_s: float) -> None:
        """The response head the application receives."""
        shown = self._secrets.headers(headers)
        lower = {name.lower(): value for name, value in shown.items()}
        self._status = status
        self._head_ms = at_s * 1000
        self._content_type = lower.get("content-type", "").lower()
        self._request_id = lower.get("x-request-id") or lower.get("request-id", "")
        self._kind = "error" if status >= 400 else "other"
        if self._view is not None:
            self._view.response(status=status, headers=shown, at_s=at_s)
        recorder = self._recorder
        if recorder is not None:
            self._record(lambda: recorder.response(status=status, headers=shown, at_s=at_s))

    def data(self, chunk: bytes, at_s: float) -> None:
        """One piece of body as forwarded to the application, ``at_s`` after the request."""
        if self._first_byte_ms is None:
            self._first_byte_ms = at_s * 1000
        self._bytes += len(chunk)
        self._last_at_s = at_s
        for piece, piece_at_s in self._mask.feed(chunk, at_s):
            self._watch(piece, piece_at_s)

    def end(
        self, *, at_s: float, outcome: str, error: QwenSSEError | None = None
    ) -> ExchangeSummary:
        """The exchange is over; ``outcome`` as :class:`ExchangeSummary` names them,
        ``error`` what broke it (None: it ended as it should). Called once (``ended``)."""
        self.ended = True
        for piece, piece_at_s in self._mask.finish():
            self._watch(piece, piece_at_s)
        error = error if error is None else _masked_error(error, self._secrets)
        status = self._status
        tap_outcome: Outcome = "ok"
        if outcome == "client-gone":
            tap_outcome = "cancelled"
        elif error is not None:
            tap_outcome = "error"
        elif status == 429:
            tap_outcome = "throttled"
        elif status is not None and status >= 400:
            tap_outcome = "error"
        message = "" if error is None else str(error)
        result: ChatResult | None = None
        view = self._view
        if view is not None and self._decoding:
            # A body watched only in part cannot be checked for its end or its usage.
            watched_all = self._watched_bytes == self._bytes
            view.end(at_s=at_s, outcome=tap_outcome if watched_all else "cancelled", error=error)
            self._show_new_anomalies()
            result = view.result
        if self._kind in ("json", "error"):
            message = message or self._body_error()
        recorder = self._recorder
        if recorder is not None:
            self._record(lambda: recorder.end(at_s=at_s, outcome=tap_outcome, error=error))
        if self._recording is not None:
            self._record(self._recording.close)
        summary = self._summary(at_s, outcome, message, result)
        self._say(summary.line())
        return summary

    # -- inside ---------------------------------------------------------------------------

    def _watch(self, piece: bytes, at_s: float) -> None:
        """Decode and record a piece (masked) of what the application received."""
        if self._max_stream_bytes is not None:
            room = self._max_stream_bytes - self._watched_bytes
            if room <= 0:
                return
            if len(piece) > room:
                piece = piece[:room]
                detail = (
                    f"the body outgrew max_stream_bytes={self._max_stream_bytes}: the rest"
                    " was forwarded, not watched nor recorded"
                )
                self._extra.append(Anomaly("tee-limit", at_s * 1000, detail))
                self._say(f"[#{self._number}] !! tee-limit: {detail}")
        if not self._watched_bytes:
            self._first_piece(piece)
        self._watched_bytes += len(piece)
        recorder = self._recorder
        if recorder is not None:
            self._record(lambda: recorder.data(piece, at_s))
        if self._kind in ("json", "error") and len(self._body_head) < _ERROR_BODY_MAX_BYTES:
            self._body_head += piece[: _ERROR_BODY_MAX_BYTES - len(self._body_head)]
        if self._decoding and self._view is not None:
            self._view.data(piece, at_s)
            self._show_new_anomalies()

    def _first_piece(self, piece: bytes) -> None:
        """Decide, at the body's first bytes, whether it is a stream to decode."""
        if self._status is None or self._status >= 400 or self._view is None:
            # An error body is shown by the trace view, never decoded as a stream.
            self._decoding = self._verbose and self._view is not None
            return
        if "json" in self._content_type and piece.lstrip()[:1] in (b"{", b"["):
            self._kind = "json"
            return
        self._kind = "stream"
        self._decoding = True

    def _body_error(self) -> str:
        """What an error body (or a JSON answer carrying an error) says, as one line."""
        protocol = self._protocol
        if protocol is None:
            return ""
        body = bytes(self._body_head)
        if self._kind == "error":
            code, message, _ = protocol.error_fields(body)
            text = f"{code}: {message}" if code else message
            return " ".join(text.split())
        failure = protocol.error_in_body(body, self._request_id)
        if failure is None:
            return ""
        self._extra.append(Anomaly("in-band-error", self._last_at_s * 1000, str(failure)))
        return ""

    def _summary(
        self, at_s: float, outcome: str, message: str, result: ChatResult | None
    ) -> ExchangeSummary:
        anomalies = list(self._view.anomalies) if self._view is not None else []
        anomalies += self._extra
        gaps = [] if result is None else [gap * 1000 for gap in result.timing.inter_token_gaps_s]
        cuts: list[float | None] = [None, None, None, None]
        if len(gaps) >= 2:
            quantiles = statistics.quantiles(gaps, n=100, method="inclusive")
            cuts = [quantiles[49], quantiles[89], quantiles[98], max(gaps)]
        ttft_s = None if result is None else result.timing.ttft_s
        return ExchangeSummary(
            number=self._number,
            method=self._method,
            path=self._path,
            protocol=self._protocol.name if self._protocol is not None else "",
            model=self._model,
            status=self._status,
            request_id=self._request_id or (result.request_id if result is not None else ""),
            fault=self._fault,
            outcome=outcome,
            error=self._secrets.text(message),
            kind=self._kind,
            complete=None if result is None or self._kind != "stream" else result.complete,
            result=result if self._kind == "stream" else None,
            head_ms=self._head_ms,
            first_byte_ms=self._first_byte_ms,
            first_token_ms=None if ttft_s is None else ttft_s * 1000,
            gap_p50_ms=cuts[0],
            gap_p90_ms=cuts[1],
            gap_p99_ms=cuts[2],
            gap_max_ms=cuts[3],
            bytes=self._bytes,
            events=0 if result is None else result.timing.events,
            duration_ms=at_s * 1000,
            anomalies=tuple(anomalies),
            recording=self._recording_path,
        )

    def _show_new_anomalies(self) -> None:
        view = self._view
        if view is None or len(view.anomalies) == self._shown_anomalies:
            return
        new = view.anomalies[self._shown_anomalies :]
        self._shown_anomalies = len(view.anomalies)
        if not self._verbose:  # the verbose trace view printed them already
            for anomaly in new:
                self._say(f"[#{self._number}] !! {anomaly.kind}: {anomaly.detail}")

    def _say(self, line: str) -> None:
        if self._out is not None:
            self._out.write(line + "\n")
            self._out.flush()

    def _record(self, write: Callable[[], object]) -> None:
        """Write to the recording; a failure (disk full) stops the recording, never the
        exchange."""
        try:
            write()
        except OSError as failure:
            self._recorder = None
            detail = f"the recording stopped: {failure.strerror or failure}"
            self._extra.append(Anomaly("record-failed", self._last_at_s * 1000, detail))
            self._say(f"[#{self._number}] !! record-failed: {detail}")


def request_object(body: bytes) -> dict[str, Any] | None:
    """A request body read as the JSON object it should be (None if it is not one)."""
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep
        return None
    return decoded if isinstance(decoded, dict) else None


def _masked_error(error: QwenSSEError, secrets: Secrets) -> QwenSSEError:
    """``error`` with any credential masked in its message (a message may quote a URL)."""
    error.args = tuple(secrets.text(arg) if isinstance(arg, str) else arg for arg in error.args)
    return error
