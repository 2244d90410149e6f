"""Personal data in training text: find it, count it, redact it.

Patterns are chosen for precision over recall on business documents full of prices, dates and
version numbers: card numbers must pass the Luhn check, IBANs the mod-97 check, phone numbers need
9-15 digits and phone-like punctuation or a leading `+`. Each match is replaced by its kind in
brackets (`[EMAIL]`), so a redacted row still reads naturally.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_US_SSN = re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")
_UK_NINO = re.compile(r"\b(?![DFIQUV])[A-CEGHJ-PR-TW-Z](?![DFIOQUV])[A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_PHONE = re.compile(r"(?<![\w+-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,4}(?![\w-])")


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _card_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and _luhn(digits)


_US_PHONE = re.compile(r"\d{3}([-.])\d{3}\1\d{4}")


def _phone_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    # Needs the shape of a phone number: a country code, an area code in brackets, a national trunk
    # prefix (0...) with groups, or the US 3-3-4 form. Rows of table figures, ids and dates do not count.
    shaped = text.startswith(("+", "(", "0")) or bool(_US_PHONE.fullmatch(text))
    return 9 <= len(digits) <= 15 and shaped and bool(re.search(r"\d[ .()-]+\d", text))


# Most specific first: an IBAN or a card number must not be half-eaten by the phone pattern.
_KINDS: tuple[tuple[str, re.Pattern[str], object], ...] = (
    ("EMAIL", _EMAIL, None),
    ("IBAN", _IBAN, _iban_ok),
    ("NATIONAL_ID", _US_SSN, None),
    ("NATIONAL_ID", _UK_NINO, None),
    ("CARD", _CARD, _card_ok),
    ("PHONE", _PHONE, _phone_ok),
)


def redact(text: str, allow: Sequence[str] = ()) -> tuple[str, Counter[str]]:
    """`text` with personal data replaced by `[KIND]`, and how many of each kind were found.

    `allow`: regular expressions for values that are not personal (a support desk's address, a
    switchboard number); a match of one of them in full is left alone and not counted.
    """
    found: Counter[str] = Counter()
    allowed = [re.compile(a) for a in allow]
    for kind, pattern, check in _KINDS:

        def swap(m: re.Match[str], kind: str = kind, check: object = check) -> str:
            if check is not None and not check(m.group(0)):  # type: ignore[operator]
                return m.group(0)
            if any(a.fullmatch(m.group(0)) for a in allowed):
                return m.group(0)
            found[kind] += 1
            return f"[{kind}]"

        text = pattern.sub(swap, text)
    return text, found


def count(text: str, allow: Sequence[str] = ()) -> int:
    """How many personal-data matches `text` holds."""
    return sum(redact(text, allow)[1].values())
