"""Meta's synchronous error answers, as the simulator gives them: code → title and HTTP status.

Titles follow Meta's error-code page; the HTTP status per code is the simulator's choice
(``../shared/reference/whatsapp-cloud-api.md`` §7.2): 400 for request and parameter errors and
for the Cloud API's own messaging codes (130429, 131056, 131047, 132xxx: integrators see 400 for
these), 401 for 190 and 0, 500 for 131000 and 3, 503 for 2, 131016 and 133004, and the older
table's 403 / 429 for the Graph API's permission and app-level rate-limit codes. Clients must key
on ``code``, never on the status; the simulator keeps the status realistic, not meaningful.
"""
from __future__ import annotations

import secrets
from typing import Any

TITLES: dict[int, str] = {
    0: "AuthException",
    1: "API Unknown",
    2: "API Service",
    3: "API Method",
    4: "API Too Many Calls",
    10: "Permission Denied",
    100: "Invalid parameter",
    190: "Access token has expired",
    200: "Permission error",
    368: "Temporarily blocked for policies violations",
    80007: "Rate limit issues",
    130403: "The business has blocked this user",
    130429: "Rate limit hit",
    130472: "User's number is part of an experiment",
    130497: "Business account is restricted from messaging users in this country",
    131000: "Something went wrong",
    131005: "Access denied",
    131008: "Required parameter is missing",
    131009: "Parameter value is not valid",
    131016: "Service unavailable",
    131021: "Recipient cannot be sender",
    131026: "Message undeliverable",
    131030: "Recipient phone number not in allowed list",
    131031: "Business Account locked",
    131042: "Business eligibility payment issue",
    131045: "Incorrect certificate",
    131047: "Re-engagement message",
    131048: "Spam rate limit hit",
    131049: "Meta chose not to deliver",
    131050: "User stopped marketing messages",
    131051: "Unsupported message type",
    131052: "Media download error",
    131053: "Media upload error",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    131057: "Account in maintenance mode",
    131062: "Business-scoped user id recipient not supported",
    131064: "Messaging limit after template classification violations",
    132000: "Number of parameters does not match the expected number of params",
    132001: "Template name does not exist in the translation",
    132005: "Translated text too long",
    132007: "Template Format Character Policy Violated",
    132012: "Parameter format does not match format in the created template",
    132015: "Template is Paused",
    132016: "Template is Disabled",
    133004: "Server Temporarily Unavailable",
    133010: "Phone number Not Registered",
    135000: "Generic user error",
}

_STATUS: dict[int, int] = {
    0: 401, 190: 401,
    3: 500, 131000: 500,
    2: 503, 131016: 503, 133004: 503,
    # Graph API codes outside the Cloud API's messaging range keep the older table's status.
    4: 429, 80007: 429,
    10: 403, 368: 403, 131005: 403, 131031: 403,
}


def http_status_for(code: int) -> int:
    """The HTTP status the simulator answers ``code`` with (400 unless the table says otherwise)."""
    if 200 <= code <= 299:
        return 403
    return _STATUS.get(code, 400)


class MetaError(Exception):
    """A refusal to answer in Meta's error shape; ``details`` names the field or the rule."""

    def __init__(self, code: int, details: str, status: int | None = None) -> None:
        super().__init__(f"({code}) {details}")
        self.code = code
        self.details = details
        self.status = status or http_status_for(code)

    def body(self) -> dict[str, Any]:
        """Meta's error body: ``{"error": {message, type, code, error_data, fbtrace_id}}``."""
        return error_body(self.code, self.details)


def error_body(code: int, details: str) -> dict[str, Any]:
    title = TITLES.get(code, "Simulated error")
    return {"error": {
        "message": f"(#{code}) {title}",
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details},
        "fbtrace_id": "A" + secrets.token_urlsafe(16),
    }}


def missing(field: str) -> MetaError:
    return MetaError(131008, f"{field} is required")


def invalid(field: str, rule: str) -> MetaError:
    return MetaError(131009, f"{field} {rule}")
