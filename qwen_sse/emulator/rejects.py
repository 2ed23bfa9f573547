"""The emulator's error vocabulary: HTTP error answers (:class:`Reject`) and in-band error
defaults, in DashScope's compatible-mode codes, types and messages.

Edge layer (part of :mod:`qwen_sse.emulator`). Each framing spells these for its own
protocol (the native protocol's ``InvalidParameter``, Anthropic's ``invalid_request_error``...).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "IN_BAND_CODE",
    "IN_BAND_MESSAGE",
    "TPM_CODE",
    "TPM_MESSAGE",
    "Reject",
    "bad_request",
    "json_object",
]

_ERROR_DEFAULTS: dict[int, tuple[str, str, str]] = {
    400: (
        "invalid_parameter_error",
        "invalid_request_error",
        "<400> InternalError.Algo.InvalidParameter: The request is invalid.",
    ),
    401: ("invalid_api_key", "invalid_request_error", "Incorrect API key provided. "),
    403: ("AccessDenied", "invalid_request_error", "Access denied."),
    404: ("model_not_found", "invalid_request_error", "The model does not exist."),
    429: (
        "limit_requests",
        "limit_requests",
        "Requests rate limit exceeded, please try again later.",
    ),
    500: (
        "internal_error",
        "internal_error",
        "An internal error has occured, please try again later or contact service support.",
    ),
    503: (
        "ServiceUnavailable",
        "ServiceUnavailable",
        "The service is temporarily unavailable, please try again later.",
    ),
}
TPM_CODE = "insufficient_quota"
TPM_MESSAGE = "Allocated quota exceeded, please increase your quota limit."
IN_BAND_CODE = "data_inspection_failed"
"""The code of the in-band error a fault sends unless it names one (output moderation)."""
IN_BAND_MESSAGE = "Output data may contain inappropriate content."


class Reject(Exception):
    """An HTTP error answer, decided while checking the request or by a fault: ``status``,
    and DashScope's ``code``, ``type`` and ``message`` (the status's usual ones unless
    given)."""

    def __init__(self, status: int, code: str | None = None, message: str | None = None) -> None:
        super().__init__(status)
        default_code, default_type, default_message = _ERROR_DEFAULTS.get(
            status, _ERROR_DEFAULTS[500 if status >= 500 else 400]
        )
        self.status = status
        self.code = code or default_code
        self.message = message or default_message
        # Client errors are typed invalid_request_error; throttling, server errors and
        # moderation repeat their code as the type.
        if code is None or code == default_code:
            self.type = default_type
        elif status == 429 or status >= 500 or code == "data_inspection_failed":
            self.type = code
        else:
            self.type = "invalid_request_error"


def json_object(body: Any) -> dict[str, Any]:
    """``body`` when it is a JSON object; else the 400 DashScope answers."""
    if not isinstance(body, dict):
        raise bad_request("The request body is not a JSON object.")
    return body


def bad_request(message: str) -> Reject:
    """The 400 ``invalid_parameter_error`` DashScope answers a request it cannot take."""
    return Reject(
        400, "invalid_parameter_error", f"<400> InternalError.Algo.InvalidParameter: {message}"
    )
