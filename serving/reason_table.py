"""The reason-code table: the reviewed mapping of model features to applicant-readable codes (one code per feature).

``serving/reason_codes.toml`` is the source; packaging checks it and copies it into every bundle (:func:`copy_table`)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec

from serving.errors import BundleError

TABLE_FILE = "reason_codes.toml"  # its name in the repository (beside this module) and in a bundle
TABLE_PATH = Path(__file__).with_name(TABLE_FILE)
ReasonTableError = BundleError  # the name packaging catches: an unreadable, malformed or incomplete table


_Text = Annotated[str, msgspec.Meta(pattern=r"\S")]  # not empty, not only spaces


class ReasonCode(msgspec.Struct, frozen=True):
    code: _Text
    text: _Text
    features: Annotated[tuple[str, ...], msgspec.Meta(min_length=1)]


class _Table(msgspec.Struct):
    version: _Text | int
    reason: Annotated[list[ReasonCode], msgspec.Meta(min_length=1)]


@dataclass(frozen=True)
class ReasonTable:
    version: str
    reasons: tuple[ReasonCode, ...]
    source: str = TABLE_FILE

    @classmethod
    def read(cls, path: str | Path) -> ReasonTable:
        """Read and check a TOML table of a ``version`` and ``[[reason]]`` entries (code, text, features), each
        feature in one; :class:`ReasonTableError` names the file and what is wrong."""
        source = str(path)
        try:
            table = msgspec.toml.decode(Path(path).read_bytes(), type=_Table)
        except msgspec.ValidationError as exc:
            raise ReasonTableError(f"{source}: expected a version and [[reason]] entries ({exc})") from None
        except (OSError, msgspec.DecodeError) as exc:  # unreadable, not UTF-8, not TOML
            raise ReasonTableError(f"{source}: unreadable reason-code table ({exc})") from None
        if len(codes := [r.code for r in table.reason]) != len(set(codes)):
            raise ReasonTableError(f"{source}: each reason code must be used once, got {codes}")
        seen: dict[str, str] = {}  # feature -> its code
        for r in table.reason:
            for feature in r.features:
                if feature in seen:
                    message = f"feature {feature!r} is already mapped to {seen[feature]}"
                    raise ReasonTableError(
                        f"{source} ({r.code}): {message}; each feature belongs to one reason code"
                    )
                seen[feature] = r.code
        reasons = tuple(ReasonCode(r.code, r.text.strip(), r.features) for r in table.reason)
        return cls(str(table.version), reasons, Path(source).name)

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
