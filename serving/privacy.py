"""Pseudonyms for identifiers (HMAC-SHA256 under a secret key: stable, not reversible), and reference records
fit to ship (only the fields the features read). The key is ``LOANRISK_PSEUDONYM_KEY`` (at least 32 bytes,
never a published value), else one made once and kept in ``<state_dir>/secrets/pseudonym.key`` (0600)."""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cached_property
from pathlib import Path
from typing import Any

from serving.config import ConfigError
from serving.contract import CLARITY_ID_FIELDS
from serving.features import SOURCE_FIELDS, build_rows

KEY_FILE = "pseudonym.key"
KEY_BYTES = 32  # a made key's size, and the least a given key may have
MAKE_KEY = 'python -c "import secrets; print(secrets.token_hex(32))"'
# Values this repository has published as a key (stack.env.example's old placeholder, an old fixed test key):
# anyone can recompute their pseudonyms, so they are refused.
PUBLISHED_KEYS: frozenset[str] = frozenset({"64-hex-characters-from-openssl-rand-hex-32", "k" * 64})
_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
# What a reference record may hold: the fields the features read, nothing else (no loanId, no anon_ssn).
REFERENCE_FIELDS: frozenset[str] = SOURCE_FIELDS


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


@dataclass(frozen=True)
class Pseudonymiser:
    """Keyed pseudonyms of identifier values (missing values stay missing)."""

    key: bytes = dataclass_field(repr=False)  # never shown

    @cached_property
    def _keyed(self) -> hmac.HMAC:
        return hmac.new(self.key, digestmod=hashlib.sha256)

    def _digest(self, value: Any) -> str:
        h = self._keyed.copy()  # the key's pads hashed once, not per value
        h.update(str(value).encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def token(self, value: Any) -> Any:
        """32 hex digits of HMAC-SHA256(key, value)."""
        return value if _missing(value) else self._digest(value)[:32]

    def clarity_id(self, value: Any) -> Any:
        """A 24-hex clarity id keeping its first 8 digits (the report time features read); else a token."""
        text = "" if _missing(value) else str(value).strip()
        if not _OBJECT_ID.fullmatch(text):
            return self.token(value)
        return text[:8].lower() + self._digest(text.lower())[:16]

    def field(self, name: str, value: Any) -> Any:
        """The pseudonym of ``value`` as the identifier field ``name``."""
        return self.clarity_id(value) if name in CLARITY_ID_FIELDS else self.token(value)


def _key_of(secret: str) -> tuple[bytes, bool]:
    """A secret's key bytes: hex when 32+ hex digits (an even count, like the kept file), else its UTF-8."""
    text = secret.strip()
    if len(text) >= 32 and len(text) % 2 == 0 and all(c in string.hexdigits for c in text):
        return bytes.fromhex(text), True
    return secret.encode(), False


_PUBLISHED = {_key_of(value)[0] for value in PUBLISHED_KEYS} | {v.strip().casefold() for v in PUBLISHED_KEYS}


def given_key(secret: str) -> bytes:
    """The key of ``secret``; ConfigError (never showing it) if shorter than 32 bytes or a published value."""
    key, hexadecimal = _key_of(secret)
    if key in _PUBLISHED or secret.strip().casefold() in _PUBLISHED:
        problem = "a value published in this repository (an example or placeholder): anyone can recompute it"
    elif len(key) < KEY_BYTES:
        read = f"{2 * len(key)} hex digits, read as hex" if hexadecimal else "text, read as its UTF-8 bytes"
        problem = f"{len(key)} bytes ({read}); a key needs at least {KEY_BYTES} bytes ({2 * KEY_BYTES} hex"
        problem += f" digits, or {KEY_BYTES} or more bytes of text)"
    else:
        return key
    raise ConfigError(
        f"LOANRISK_PSEUDONYM_KEY (setting pseudonym_key) is {problem}; make one with: {MAKE_KEY} (or unset "
        f"it to use the key kept in <state_dir>/secrets/{KEY_FILE})"
    )


def load_key(secret: str | None, secrets_dir: str | Path) -> bytes:
    """``secret``'s key (:func:`given_key`), else the one kept in ``secrets_dir`` (made 0600 on first use)."""
    if secret:
        return given_key(secret)
    folder = Path(secrets_dir)
    path = folder / KEY_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
            fh.write(secrets.token_hex(KEY_BYTES) + "\n")
        try:
            os.link(tmp, path)  # publish without overwriting a key another process made first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise ValueError(f"{path} does not hold a hex key; remove it to make a new one") from None
    if len(key) < 16:
        raise ValueError(f"{path} holds a key of {len(key)} bytes; at least 16 are needed")
    return key


def reference_record(record: Mapping[str, Any], pseudonymiser: Pseudonymiser) -> dict[str, Any]:
    """The fields of ``record`` the features read, with ``clarityFraudId`` pseudonymised (same model row)."""
    out = {k: v for k, v in record.items() if k in REFERENCE_FIELDS}
    if "clarityFraudId" in out:
        out["clarityFraudId"] = pseudonymiser.clarity_id(out["clarityFraudId"])
    return out


def _same(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def reference_records(
    records: Iterable[Mapping[str, Any]], pseudonymiser: Pseudonymiser
) -> list[dict[str, Any]]:
    """:func:`reference_record` of each record, checked to give exactly the model rows the originals give."""
    originals = list(records)
    out = [reference_record(r, pseudonymiser) for r in originals]
    for i, (want, got) in enumerate(zip(build_rows(originals), build_rows(out), strict=True)):
        if len(want) != len(got) or not all(map(_same, want, got)):
            raise ValueError(f"reference record {i}: the pseudonymised record gives another model row")
    return out


def foreign_fields(records: Iterable[Mapping[str, Any]]) -> list[tuple[int, str]]:
    """(record index, field) for every field a reference record may not hold."""
    return [(i, k) for i, r in enumerate(records) for k in r if k not in REFERENCE_FIELDS]
