"""Batch scoring writes its outputs (scores, rejects) only under the setting ``score_output_root`` (default
``<state_dir>/scores``): a relative output is taken under it; ``..`` out of it, an absolute path elsewhere or a
symlink pointing out is refused by name before anything is read, and nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from tasks.settings import Settings
from tests.serving.synthetic import make_bundle, records_from_files

ROOT = Path(__file__).resolve().parent.parent
CLARITY = "clarity_underwriting_variables.csv"


@pytest.fixture(scope="module")
def small_input(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 300 loans of the session's sample with its clarity file."""
    out = tmp_path_factory.mktemp("score-paths-input")
    with (sample_dir / "loan.csv").open() as fh:
        (out / "loan.csv").write_text("".join(line for _, line in zip(range(301), fh, strict=False)))
    (out / CLARITY).write_bytes((sample_dir / CLARITY).read_bytes())
    return out


@pytest.fixture(scope="module")
def bundle_dir(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = records_from_files(sample_dir)[:2000]
    return make_bundle(
        tmp_path_factory.mktemp("score-paths-bundle"), records, iterations=10, model_version="3"
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "scores"


@pytest.fixture
def settings(tmp_path: Path, root: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state", score_output_root=root)


def _nothing_written(*folders: Path) -> None:
    for folder in folders:
        left = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
        assert left == [], left


# --- refused -----------------------------------------------------------------------------------------------


def _refused_outputs(tmp_path: Path, root: Path) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (root / "out-link").symlink_to(outside, target_is_directory=True)
    (root / "file-link.csv").symlink_to(outside / "victim.csv")
    return {
        "dotdot": "../x.csv",
        "dotdot-inside-first": "sub/../../x.csv",
        "absolute-elsewhere": str(tmp_path / "elsewhere.csv"),
        "absolute-tmp": "/tmp/elsewhere.csv",
        "through-a-symlinked-folder": "out-link/x.csv",
        "a-symlinked-file": "file-link.csv",
        "absolute-through-a-symlink": str(root / "out-link" / "x.csv"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "dotdot",
        "dotdot-inside-first",
        "absolute-elsewhere",
        "absolute-tmp",
        "through-a-symlinked-folder",
        "a-symlinked-file",
        "absolute-through-a-symlink",
    ],
)
@pytest.mark.parametrize("which", ["output", "rejects"])
def test_an_output_out_of_the_root_is_refused_before_anything_is_read(
    case: str, which: str, settings: Settings, root: Path, tmp_path: Path
) -> None:
    from tasks.monitoring.score_files import ScoreOutputError
    from tasks.monitoring.scoring import score_task

    path = _refused_outputs(tmp_path, root)[case]
    output, rejects = (path, None) if which == "output" else ("fine.csv", path)
    # neither the bundle nor the input exists: the refusal must come first, naming the path and the setting
    with pytest.raises(ScoreOutputError) as caught:
        score_task.fn(settings, tmp_path / "no-bundle", str(tmp_path / "no-input.csv"), output, None, rejects)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert path in message and "score_output_root" in message and str(root) in message, message
    assert message.startswith(which), message
    _nothing_written(tmp_path / "outside", root)


def test_an_object_store_url_is_refused_by_name(settings: Settings, tmp_path: Path) -> None:
    from tasks.monitoring.score_files import ScoreOutputError
    from tasks.monitoring.scoring import score_task

    with pytest.raises(ScoreOutputError, match="s3://bucket/scores.csv"):
        score_task.fn(settings, tmp_path / "no-bundle", str(tmp_path / "in.csv"), "s3://bucket/scores.csv")


# --- accepted ----------------------------------------------------------------------------------------------


def test_a_relative_output_lands_under_the_root(
    settings: Settings,
    root: Path,
    bundle_dir: Path,
    small_input: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks.monitoring.scoring import score_task

    monkeypatch.chdir(tmp_path)  # not the working directory's

    summary = score_task.fn(
        settings, bundle_dir, str(small_input / "loan.csv"), "team/scores.csv", str(small_input / CLARITY),
        "team/rejects.csv",
    )  # fmt: skip
    assert summary["output"] == str(root.resolve() / "team" / "scores.csv")
    assert summary["rejects"] == str(root.resolve() / "team" / "rejects.csv")
    assert pacsv.read_csv(root / "team" / "scores.csv").num_rows == summary["rows_scored"] == 300
    assert (root / "team" / "rejects.csv").is_file()
    assert not (tmp_path / "team").exists()


def test_an_absolute_output_inside_the_root_is_accepted(
    settings: Settings, root: Path, bundle_dir: Path, small_input: Path, tmp_path: Path
) -> None:
    from tasks.monitoring.scoring import score_task

    (root / "in").mkdir(parents=True)
    (root / "link-in").symlink_to(root / "in", target_is_directory=True)  # a symlink that stays inside
    for target, lands in (
        (root / "a.parquet", root / "a.parquet"),
        (root / "link-in/b.csv", root / "in/b.csv"),
    ):
        summary = score_task.fn(
            settings, bundle_dir, str(small_input / "loan.csv"), str(target), str(small_input / CLARITY)
        )
        assert summary["output"] == str(lands.resolve()) and lands.is_file()


def test_the_default_root_is_scores_under_the_state_dir(tmp_path: Path) -> None:
    from tasks.monitoring.score_files import output_under_root

    settings = Settings(state_dir=tmp_path / "state")
    assert (
        output_under_root(settings.score_root, "x.csv") == (tmp_path / "state" / "scores" / "x.csv").resolve()
    )


# --- the command line --------------------------------------------------------------------------------------


def _cli(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    """``python -m flows.score ARGS`` run in a folder of its own beside the root (a relative path stays there)."""
    cwd = root.parent / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LOANRISK_SCORE_OUTPUT_ROOT": str(root), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "flows.score", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_command_line_refuses_an_output_out_of_the_root(tmp_path: Path, root: Path) -> None:
    elsewhere = tmp_path / "elsewhere.csv"
    # no --bundle: were the output checked after fetch-model, the registry would answer first
    proc = _cli([str(tmp_path / "no-input.csv"), "--output", str(elsewhere)], root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    assert error.startswith("ScoreOutputError: ") and str(elsewhere) in error, error
    assert "score_output_root" in error and "LOANRISK_SCORE_OUTPUT_ROOT" in error, error
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not elsewhere.exists()
    proc = _cli([str(tmp_path / "no-input.csv"), "--output", "ok.csv", "--rejects", "../r.csv"], root)
    assert proc.returncode == 1 and "../r.csv" in json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    assert "Traceback" not in proc.stdout + proc.stderr
    _nothing_written(root)


def test_the_flow_refuses_before_the_model_is_fetched(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Prefect API passes ``output`` and ``rejects`` to the flow: it checks them before ``fetch-model``."""
    from flows.score import score_flow
    from tasks.monitoring.score_files import ScoreOutputError
    from tasks.settings import get_settings

    monkeypatch.setenv("LOANRISK_SCORE_OUTPUT_ROOT", str(root))
    get_settings.cache_clear()
    try:
        # no bundle: the registry would be asked for the champion first were the output not checked first
        with pytest.raises(ScoreOutputError, match="score_output_root"):
            score_flow.fn(input=str(tmp_path / "in.csv"), output=str(tmp_path / "elsewhere.csv"))
        with pytest.raises(ScoreOutputError, match=r"rejects '\.\./r\.csv'"):
            score_flow.fn(input=str(tmp_path / "in.csv"), output="ok.csv", rejects="../r.csv")
    finally:
        get_settings.cache_clear()
    _nothing_written(root)
    assert not (tmp_path / "elsewhere.csv").exists()
