"""Personal data detection: each kind found, business numbers left alone, allow-list respected."""

from __future__ import annotations

import pytest

from tasks.pii import count, redact


@pytest.mark.parametrize(
    "text, kind",
    [
        ("write to jane.doe@example.com today", "EMAIL"),
        ("call +44 20 7946 0958 after 5", "PHONE"),
        ("call 020 7946 0958 after 5", "PHONE"),
        ("US office 512-555-0147", "PHONE"),
        ("card 4111 1111 1111 1111 exp 12/28", "CARD"),
        ("pay to GB82 WEST 1234 5698 7654 32 please", "IBAN"),
        ("SSN 123-45-6789 on file", "NATIONAL_ID"),
        ("NI number AB123456C", "NATIONAL_ID"),
    ],
)
def test_each_kind_is_found_and_redacted(text, kind):
    redacted, found = redact(text)
    assert found == {kind: 1}
    assert f"[{kind}]" in redacted


@pytest.mark.parametrize(
    "text",
    [
        "The London cap is £185 per night from 2026-02-01.",
        "Upgrade to firmware 3.4.1 or Tidewell 4.2.0.",
        "Total 239 41 49 33 362",  # a row of table figures
        "RMA numbers look like RMA-2026-00417.",
        "card-like 4111 1111 1111 1112 fails the Luhn check",
        "IBAN-like GB00 WEST 1234 5698 7654 32 fails mod 97",
        "Revenue rose to 12,400,000 in 2025 and 2026.",
    ],
)
def test_business_numbers_are_not_personal_data(text):
    assert count(text) == 0
    assert redact(text)[0] == text


def test_allow_list_keeps_role_addresses_but_not_people():
    text = "Mail support@velmora.example or jane@velmora.example."
    redacted, found = redact(text, allow=[r"support@velmora\.example"])
    assert redacted == "Mail support@velmora.example or [EMAIL]."
    assert found == {"EMAIL": 1}
