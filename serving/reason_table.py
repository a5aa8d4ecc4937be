"""The reason-code table: the reviewed mapping of model features to applicant-readable codes (one code per feature).

``serving/reason_codes.toml`` is the source; packaging checks it and copies it into every bundle (:func:`copy_table`)."""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.errors import BundleError

TABLE_FILE = "reason_codes.toml"  # its name in the repository (beside this module) and in a bundle
TABLE_PATH = Path(__file__).with_name(TABLE_FILE)
ReasonTableError = BundleError  # the name packaging catches: an unreadable, malformed or incomplete table


@dataclass(frozen=True)
class ReasonCode:
    code: str
    text: str
    features: tuple[str, ...]


@dataclass(frozen=True)
class ReasonTable:
    version: str
    reasons: tuple[ReasonCode, ...]
    source: str = TABLE_FILE

    @classmethod
    def read(cls, path: str | Path) -> ReasonTable:
        """Read and check a TOML table; :class:`ReasonTableError` names the file and what is wrong."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ReasonTableError(f"{path}: unreadable reason-code table ({exc})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = TABLE_FILE) -> ReasonTable:
        version, entries = data.get("version"), data.get("reason")
        if not isinstance(version, str | int) or isinstance(version, bool) or not str(version).strip():
            raise ReasonTableError(f"{source}: 'version' must be a non-empty string or integer")
        if not isinstance(entries, list) or not entries:
            raise ReasonTableError(f"{source}: expected [[reason]] entries with code, text and features")
        reasons: list[ReasonCode] = []
        seen: dict[str, str] = {}  # feature -> its code
        for i, entry in enumerate(entries):
            where = f"{source}: reason {i + 1}"
            if not isinstance(entry, dict):
                raise ReasonTableError(f"{where}: expected a table with code, text and features")
            code, text, features = entry.get("code"), entry.get("text"), entry.get("features")
            if not isinstance(code, str) or not code.strip() or code in {r.code for r in reasons}:
                raise ReasonTableError(f"{where}: 'code' must be a non-empty string used once, got {code!r}")
            if not isinstance(text, str) or not text.strip():
                raise ReasonTableError(f"{where} ({code}): 'text' must be a non-empty string")
            if (
                not isinstance(features, list)
                or not features
                or not all(isinstance(f, str) for f in features)
            ):
                raise ReasonTableError(
                    f"{where} ({code}): 'features' must be a non-empty list of feature names"
                )
            for feature in features:
                if feature in seen:
                    raise ReasonTableError(f"{where} ({code}): feature {feature!r} is already mapped to "
                                           f"{seen[feature]}; each feature belongs to one reason code")  # fmt: skip
                seen[feature] = code
            reasons.append(ReasonCode(code, text.strip(), tuple(features)))
        return cls(str(version), tuple(reasons), Path(source).name)

    def check(self, features: Sequence[str]) -> None:
        """Raise :class:`ReasonTableError` unless the table maps exactly the model's features."""
        mapped = {f for r in self.reasons for f in r.features}
        name = f"reason-code table {self.source} (version {self.version})"
        if missing := [f for f in features if f not in mapped]:
            raise ReasonTableError(
                f"{name} maps no reason code to the model feature(s) {', '.join(missing)}: add each to one "
                "[[reason]] entry's features (and have the change reviewed)"
            )
        if unknown := [f for r in self.reasons for f in r.features if f not in set(features)]:
            raise ReasonTableError(f"{name} names feature(s) the model does not have: {', '.join(unknown)}")

    def as_dict(self) -> dict[str, Any]:
        codes = [{"code": r.code, "text": r.text, "features": list(r.features)} for r in self.reasons]
        return {"version": self.version, "file": self.source, "codes": codes}


def copy_table(
    bundle_dir: str | Path, features: Sequence[str], source: str | Path = TABLE_PATH
) -> ReasonTable:
    """Check the table against the model's features and copy it into a bundle; returns it."""
    (table := ReasonTable.read(source)).check(features)
    shutil.copyfile(source, Path(bundle_dir) / TABLE_FILE)
    return table
