"""The pseudonym key given by the settings (``LOANRISK_PSEUDONYM_KEY`` / ``pseudonym_key``) must be a real
secret: at least 32 bytes (64+ hex digits are read as hex; other text as its UTF-8 bytes) and none of the values
published in this repository. Refused where the key is read, by the pipeline (``Settings.pseudonymiser()``)
and by the service (its prediction log, at start); the key kept in ``<state_dir>/secrets/`` works as before.

The tests' own keys are made per run (never a literal), so the scan below covers every tracked file, the tests'
included: any literal value assigned to ``LOANRISK_PSEUDONYM_KEY`` or ``pseudonym_key`` in the repository must
be refused by :func:`serving.privacy.load_key`.
"""

from __future__ import annotations

import ast
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.privacy import KEY_FILE, Pseudonymiser, load_key
from tasks.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
MAKE_ONE = 'python -c "import secrets; print(secrets.token_hex(32))"'
OLD_PLACEHOLDER = "64-hex-characters-from-openssl-rand-hex-32"  # stack.env.example's, until this change


# --- the rule ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "operator-key",  # text: 12 bytes
        "x" * 31,  # text: one byte short
        "é" * 15 + "x",  # 31 UTF-8 bytes
        "0123abcd" * 4,  # 32 hex digits: 16 bytes
        "ab" * 31,  # 62 hex digits: 31 bytes
    ],
)
def test_a_short_key_is_refused_with_how_to_make_one(secret: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes") as caught:
        load_key(secret, tmp_path)
    message = str(caught.value)
    assert MAKE_ONE in message and "LOANRISK_PSEUDONYM_KEY" in message and "pseudonym_key" in message
    assert secret not in message  # a secret, however weak, is never shown
    assert not (tmp_path / KEY_FILE).exists()


@pytest.mark.parametrize(
    ("secret", "key"),
    [
        ("ab" * 32, bytes.fromhex("ab" * 32)),  # 64 hex digits: 32 bytes
        (" " + "AB" * 40 + "\n", bytes.fromhex("ab" * 40)),  # trimmed, any case
        ("x" * 32, b"x" * 32),  # text: 32 bytes
        ("é" * 16, "é".encode() * 16),  # 32 UTF-8 bytes
        ("0123abcd" * 4 + "-", ("0123abcd" * 4 + "-").encode()),  # not hex: text, 33 bytes
    ],
)
def test_a_key_of_32_bytes_or_more_is_taken(secret: str, key: bytes, tmp_path: Path) -> None:
    assert load_key(secret, tmp_path) == key


def test_a_fresh_key_made_as_the_message_says_is_taken(tmp_path: Path) -> None:
    made = secrets.token_hex(32)
    assert load_key(made, tmp_path) == bytes.fromhex(made)


def test_published_values_are_refused(tmp_path: Path) -> None:
    from serving.privacy import PUBLISHED_KEYS

    assert OLD_PLACEHOLDER in PUBLISHED_KEYS
    for value in PUBLISHED_KEYS:
        for variant in (value, value.upper(), f"  {value}\n"):
            with pytest.raises(ValueError, match="published") as caught:
                load_key(variant, tmp_path)
            assert MAKE_ONE in str(caught.value) and variant.strip() not in str(caught.value)


def test_the_kept_key_file_still_works(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    kept = load_key(None, secrets_dir)
    assert len(kept) == 32 and load_key(None, secrets_dir) == kept
    assert load_key((secrets_dir / KEY_FILE).read_text(), tmp_path / "elsewhere") == kept  # its text, given


# --- where the settings give the key ----------------------------------------------------------------------------


def test_the_pipeline_refuses_a_weak_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for weak in ("operator-key", OLD_PLACEHOLDER):
        monkeypatch.setenv("LOANRISK_PSEUDONYM_KEY", weak)
        with pytest.raises(ValueError, match="LOANRISK_PSEUDONYM_KEY"):
            Settings(state_dir=tmp_path).pseudonymiser()
    strong = secrets.token_hex(32)
    monkeypatch.setenv("LOANRISK_PSEUDONYM_KEY", strong)
    given = Settings(state_dir=tmp_path).pseudonymiser()
    assert given.token("x") == Pseudonymiser(bytes.fromhex(strong)).token("x")
    monkeypatch.delenv("LOANRISK_PSEUDONYM_KEY")
    kept = Settings(state_dir=tmp_path).pseudonymiser()  # no setting: the kept key, made once
    assert (tmp_path / "secrets" / KEY_FILE).is_file() and kept.token("x") != given.token("x")


def test_the_service_refuses_a_weak_key_at_start(tmp_path: Path) -> None:
    from serving.app import create_app

    for weak in ("prediction-log-key", OLD_PLACEHOLDER):
        config = {
            "bundle_dir": tmp_path / "bundle",
            "prediction_log_dir": tmp_path / "log",
            "pseudonym_key": weak,
        }
        with pytest.raises(ValueError, match="LOANRISK_PSEUDONYM_KEY") as caught:
            create_app(config)  # the log starts before the model is loaded: the key is what stops it
        assert MAKE_ONE in str(caught.value)


# --- the repository publishes no accepted key -------------------------------------------------------------------

_NAMES = ("LOANRISK_PSEUDONYM_KEY", "pseudonym_key")
_NAME = r"\b(?:LOANRISK_PSEUDONYM_KEY|pseudonym_key)\b"
# A literal after ``=`` (env files, shell, a ``KEY=value`` in a text) or after ``:`` and a space (YAML, JSON): a
# quoted string, or an unquoted word that is not a variable reference (``${...}``, ``$VAR``).
_TEXT_ASSIGNMENT = re.compile(
    _NAME
    + r"""["'`]?[ \t]*(?:=|:[ \t])[ \t]*(?:"(?P<dq>[^"\n]*)"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s"'`$|,;)\]}]+))"""
)


def _is_python(path: Path, text: str) -> bool:
    return path.suffix == ".py" or (text.startswith("#!") and "python" in text.split("\n", 1)[0])


def _python_literals(text: str) -> Iterator[tuple[int, str]]:
    """(line, value) of each string a Python module gives the key: ``pseudonym_key="..."`` (keyword or
    assignment), ``{"LOANRISK_PSEUDONYM_KEY": "..."}``, ``setenv("LOANRISK_PSEUDONYM_KEY", "...")``,
    ``environ["LOANRISK_PSEUDONYM_KEY"] = "..."``; a module-level name bound once to a string counts as it,
    and so does ``"k" * 64``."""
    tree = ast.parse(text)
    constants: dict[str, list[ast.expr]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            constants.setdefault(node.target.id, []).append(node.value)

    def value(expr: ast.expr | None, depth: int = 0) -> str | None:
        if expr is None or depth > 3:
            return None
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value
        if isinstance(expr, ast.Name) and len(constants.get(expr.id, [])) == 1:
            return value(constants[expr.id][0], depth + 1)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mult):
            text, times = value(expr.left, depth + 1), expr.right
            if text is not None and isinstance(times, ast.Constant) and isinstance(times.value, int):
                return text * times.value
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            left, right = value(expr.left, depth + 1), value(expr.right, depth + 1)
            if left is not None and right is not None:
                return left + right
        return None

    def named(expr: ast.expr) -> bool:
        if isinstance(expr, ast.Constant):
            return expr.value in _NAMES
        if isinstance(expr, ast.Name):
            return expr.id in _NAMES
        if isinstance(expr, ast.Attribute):
            return expr.attr in _NAMES
        if isinstance(expr, ast.Subscript):
            return named(expr.slice)
        return False

    for node in ast.walk(tree):
        given: list[ast.expr | None] = []
        if isinstance(node, ast.Call):
            given += [k.value for k in node.keywords if k.arg in _NAMES]
            if len(node.args) >= 2 and named(node.args[0]):  # setenv(NAME, v), environ.setdefault(NAME, v)
                given.append(node.args[1])
        elif isinstance(node, ast.Dict):
            given += [v for k, v in zip(node.keys, node.values, strict=True) if k is not None and named(k)]
        elif isinstance(node, ast.Assign):
            given += [node.value for t in node.targets if named(t)]
        elif isinstance(node, ast.AnnAssign) and named(node.target):
            given.append(node.value)
        for expr in given:
            literal = value(expr)
            if literal is not None:
                yield getattr(expr, "lineno", getattr(node, "lineno", 0)), literal


def _text_literals(text: str) -> Iterator[tuple[int, str]]:
    for match in _TEXT_ASSIGNMENT.finditer(text):
        literal = next(g for g in (match["dq"], match["sq"], match["bare"]) if g is not None)
        if literal.startswith("$"):
            continue  # ${VAR} / $VAR: a reference, not a value
        yield text.count("\n", 0, match.start()) + 1, literal


def published_assignments(path: Path, text: str) -> list[tuple[int, str]]:
    """(line, value) of every literal value ``text`` (the file ``path``) assigns to the pseudonym key."""
    if _is_python(path, text):
        try:
            return list(_python_literals(text))
        except SyntaxError:
            pass
    return list(_text_literals(text))


def _tracked_text_files() -> Iterator[tuple[Path, str]]:
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, names):
        path = REPO_ROOT / name.decode()
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        try:
            yield path, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


@pytest.mark.parametrize(
    ("name", "text", "found"),
    [
        ("stack.env.example", f"LOANRISK_PSEUDONYM_KEY={OLD_PLACEHOLDER}\nWORKERS=2\n", [OLD_PLACEHOLDER]),
        (".env", "LOANRISK_PSEUDONYM_KEY=\n# python -c ...\n", []),
        ("compose.yaml", "  LOANRISK_PSEUDONYM_KEY: ${LOANRISK_PSEUDONYM_KEY:?set it}\n", []),
        ("compose.yaml", '  LOANRISK_PSEUDONYM_KEY: "abc"\n  pseudonym_key: def\n', ["abc", "def"]),
        ("README.md", "`LOANRISK_PSEUDONYM_KEY=0123 uv run x` and | `pseudonym_key` | none |", ["0123"]),
        ("loanrisk.toml", 'pseudonym_key = "from-a-toml"\n', ["from-a-toml"]),
        ("t.py", 'KEY = "a-test-key"\nmake_app(pseudonym_key=KEY)\n', ["a-test-key"]),
        ("t.py", 'S = {"LOANRISK_PSEUDONYM_KEY": "k" * 64}\n', ["k" * 64]),
        ("t.py", 'mp.setenv("LOANRISK_PSEUDONYM_KEY", "op" + "-key")\n', ["op-key"]),
        ("t.py", 'os.environ["LOANRISK_PSEUDONYM_KEY"] = "env-key"\n', ["env-key"]),
        ("t.py", "KEY = secrets.token_hex(32)\nenv = dict(LOANRISK_PSEUDONYM_KEY=KEY)\n", []),
        (
            "t.py",
            "pseudonym_key: SecretStr | None = None\nx = s.serving.pseudonym_key.get_secret_value()\n",
            [],
        ),
    ],
)
def test_the_scan_finds_literal_assignments(name: str, text: str, found: list[str]) -> None:
    assert [v for _, v in published_assignments(Path(name), text)] == found


def test_no_value_published_in_the_repository_is_accepted_as_a_key(tmp_path: Path) -> None:
    accepted = []
    for path, text in _tracked_text_files():
        for line, value in published_assignments(path, text):
            try:
                load_key(value, tmp_path)
            except ValueError:
                continue
            accepted.append(f"{path.relative_to(REPO_ROOT)}:{line}: {value!r}")
    assert accepted == [], (
        "literal pseudonym keys in the repository that load_key accepts; add each to "
        f"serving.privacy.PUBLISHED_KEYS (or make the key at run time): {accepted}"
    )


def test_the_stack_example_holds_no_key_and_says_how_to_make_one() -> None:
    """The key is a secret file ``compose init`` makes; the example of ``.env`` only says how to bring one."""
    text = (REPO_ROOT / "deployments" / "stack" / "stack.env.example").read_text()
    lines = text.splitlines()
    assert not [line for line in lines if "PSEUDONYM_KEY=" in line and not line.startswith("#")], text
    assert any(MAKE_ONE in line for line in lines if line.startswith("#")), text
