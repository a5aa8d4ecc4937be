"""The release audit trail as a user reads it (read-only: before the ledger's first entry, what it seeds)."""

from __future__ import annotations

from tasks.release.ledger import history_rows, legacy_entries, read_ledger
from tasks.settings import Settings

COLUMNS = tuple("seq,at,version,kind,by,why,gated against,replaced,rolled back from,digest".split(","))


def read_history(settings: Settings) -> list[dict[str, str]]:
    """Every champion change, oldest first, as rows (see :func:`tasks.release.ledger.history_rows`)."""
    return history_rows(read_ledger(settings) or legacy_entries(settings))


def history_text(rows: list[dict[str, str]], model_name: str) -> str:
    """The rows as an aligned text table (the digest shortened to 19 characters)."""
    if not rows:
        return f"{model_name}: no champion has been released\n"
    cells = [[r.get(c, "")[: 19 if c == "digest" else None] for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return f"{model_name}: {len(rows)} champion change(s), oldest first\n" + "\n".join(lines) + "\n"
