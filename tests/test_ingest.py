"""Ingest: sources, the sample cache, local folders, and the real huggingface_hub client against a local Hub."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tasks.data import sources
from tasks.data.contract import DATA_FILES
from tasks.data.ingest import ingest, ingest_task, record_ingest
from tasks.data.sources import (
    MANIFEST_NAME,
    IngestResult,
    MissingSourceFileError,
    Source,
    parse_source,
    sha256_file,
)
from tasks.errors import PermanentError, TransientError
from tasks.settings import Settings
from tests.hf_server import CHANGED_FILE, FakeHub, HubFixture, hf_hub, hf_hub_files  # noqa: F401

FAST = {"backoff_seconds": 0.001}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(state_dir=tmp_path / "state", **kw)


def _ingest(source: str, settings: Settings, **kw) -> IngestResult:
    return ingest(source, settings.data, settings.data_dir, **kw)


def _assert_describes(result: IngestResult, expected: dict[str, Path]) -> None:
    assert set(result.files) == set(DATA_FILES)
    for name in DATA_FILES:
        entry = result.files[name]
        assert Path(entry["path"]).is_file()
        assert entry["size"] == expected[name].stat().st_size
        assert entry["sha256"] == _sha(expected[name])


# --------------------------------------------------------------------------------------------------
# parse_source


def test_parse_source_accepts_the_three_forms(tmp_path: Path) -> None:
    assert parse_source("sample") == Source(kind="sample", raw="sample")
    assert parse_source(" SAMPLE ").kind == "sample"
    local = parse_source(str(tmp_path))
    assert local.kind == "local" and local.path == tmp_path.resolve()
    hub = parse_source("hf://datasets/keanteng/loan")
    assert (hub.kind, hub.repo_id, hub.revision) == ("hub", "keanteng/loan", None)
    pinned = parse_source("hf://datasets/keanteng/loan@" + "a" * 40)
    assert (pinned.repo_id, pinned.revision) == ("keanteng/loan", "a" * 40)
    assert parse_source("hf://datasets/keanteng/loan@refs/pr/1").revision == "refs/pr/1"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "s3://bucket/loan",
        "https://huggingface.co/datasets/keanteng/loan",
        "hf://keanteng/loan",
        "hf://models/keanteng/loan",
        "hf://datasets/keanteng",
        "hf://datasets/keanteng/loan/extra",
        "hf://datasets/keanteng/loan@",
        "hf://datasets/../loan",
        "/definitely/not/a/folder/anywhere",
    ],
)
def test_parse_source_rejects_anything_else(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_source(bad)


def test_parse_source_rejects_a_file(tmp_path: Path) -> None:
    f = tmp_path / "loan.csv"
    f.write_text("x\n")
    with pytest.raises(ValueError, match="directory"):
        parse_source(str(f))


def test_hf_shorthand_uses_settings(tmp_path: Path) -> None:
    s = _settings(tmp_path, hf_repo="someone/data", hf_revision="v1")
    assert sources.expand_source("hf", s.data) == "hf://datasets/someone/data@v1"
    assert sources.expand_source(None, _settings(tmp_path, source="sample").data) == "sample"


def test_sha256_file_is_the_sha256_of_the_content(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    f.write_bytes(b"0123456789" * 1000)
    assert sha256_file(f) == hashlib.sha256(b"0123456789" * 1000).hexdigest()


# --------------------------------------------------------------------------------------------------
# sample


def test_sample_is_generated_once_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.data.sample

    calls: list[tuple] = []
    real = tasks.data.sample.generate

    def counting(out_dir, scale=1.0, seed=42):
        calls.append((Path(out_dir), scale, seed))
        return real(out_dir, scale=scale, seed=seed)

    monkeypatch.setattr(tasks.data.sample, "generate", counting)
    s = _settings(tmp_path, sample_scale=0.01, sample_seed=3)
    first = _ingest("sample", s)
    assert first.kind == "sample" and first.revision is None and not first.cached
    assert first.data_dir == s.data_dir / "sample-scale0.01-seed3"
    assert (first.data_dir / MANIFEST_NAME).is_file()
    assert len(calls) == 1 and calls[0][1:] == (0.01, 3)
    _assert_describes(first, {n: first.data_dir / n for n in DATA_FILES})
    assert not list(s.data_dir.glob(".*tmp*")), "the temporary folder must be gone"

    second = _ingest("sample", s)
    assert second.cached and len(calls) == 1
    assert second.files == first.files and second.content_sha256 == first.content_sha256


def test_sample_half_written_folder_is_regenerated(tmp_path: Path) -> None:
    s = _settings(tmp_path, sample_scale=0.01, sample_seed=3)
    first = _ingest("sample", s)
    # no manifest: a crash before the end
    (first.data_dir / MANIFEST_NAME).unlink()
    (first.data_dir / "payment.csv").write_text("truncated")
    again = _ingest("sample", s)
    assert not again.cached
    assert again.files == first.files
    # a file changed size behind the manifest's back
    (again.data_dir / "loan.csv").write_text("truncated")
    third = _ingest("sample", s)
    assert not third.cached and third.files == first.files


def test_sample_folder_depends_on_scale_and_seed(tmp_path: Path) -> None:
    a = _ingest("sample", _settings(tmp_path, sample_scale=0.01, sample_seed=1))
    b = _ingest("sample", _settings(tmp_path, sample_scale=0.01, sample_seed=2))
    assert a.data_dir != b.data_dir
    assert a.content_sha256 != b.content_sha256


# --------------------------------------------------------------------------------------------------
# local folder


def test_local_folder(tmp_path: Path, hf_hub_files) -> None:  # noqa: F811
    folder = tmp_path / "data"
    folder.mkdir()
    for name, path in hf_hub_files.first.items():
        shutil.copy(path, folder / name)
    result = _ingest(str(folder), _settings(tmp_path))
    assert result.kind == "local" and result.data_dir == folder.resolve() and result.revision is None
    _assert_describes(result, hf_hub_files.first)


def test_local_folder_missing_file_names_file_and_folder(tmp_path: Path, hf_hub_files) -> None:  # noqa: F811
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(hf_hub_files.first["loan.csv"], folder / "loan.csv")
    shutil.copy(hf_hub_files.first[CHANGED_FILE], folder / CHANGED_FILE)
    with pytest.raises(MissingSourceFileError) as err:
        _ingest(str(folder), _settings(tmp_path))
    assert "payment.csv" in str(err.value) and str(folder.resolve()) in str(err.value)
    assert isinstance(err.value, PermanentError)


# --------------------------------------------------------------------------------------------------
# Hugging Face Hub (real client, local server)


def test_hub_download_then_cache(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    hub = hf_hub.hub
    s = _settings(tmp_path)
    first = _ingest(hf_hub.source(), s, **FAST)
    assert first.kind == "hub" and not first.cached
    assert first.revision == hf_hub.second_sha and first.repo_id == hf_hub.repo_id
    _assert_describes(first, hf_hub.files.second)
    assert first.data_dir.parent.name == "snapshots" and first.data_dir.name == hf_hub.second_sha
    assert str(first.data_dir).startswith(str(s.data_dir / "hf"))
    for name in DATA_FILES:
        assert hub.count("GET", f"/resolve/{hf_hub.second_sha}/{name}", status=200) == 1

    hub.reset_counters()
    second = _ingest(hf_hub.source(), s, **FAST)
    assert second.cached and second.revision == hf_hub.second_sha
    assert second.files == first.files
    assert hub.count(contains="/resolve/") == 0, hub.requests  # no HEAD, no GET of file content
    assert hub.count("GET", "/api/datasets/") == 1  # only the branch -> sha look-up


def test_hub_pinned_revision_is_honoured_and_cached_offline(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    hub = hf_hub.hub
    s = _settings(tmp_path)
    old = _ingest(hf_hub.source(hf_hub.first_sha), s, **FAST)
    assert old.revision == hf_hub.first_sha
    assert old.files[CHANGED_FILE]["sha256"] == _sha(hf_hub.files.first[CHANGED_FILE])
    assert old.files[CHANGED_FILE]["sha256"] != _sha(hf_hub.files.second[CHANGED_FILE])
    _assert_describes(old, hf_hub.files.first)

    hub.reset_counters()
    again = _ingest(hf_hub.source(hf_hub.first_sha), s, **FAST)
    assert again.cached and again.files == old.files
    assert hub.requests == []  # a pinned, fully cached commit needs no network at all

    # the head commit shares two blobs with the first: only the changed file is fetched
    hub.reset_counters()
    head = _ingest(hf_hub.source("main"), s, **FAST)
    assert head.revision == hf_hub.second_sha and not head.cached
    assert hub.count("GET", "/resolve/") == 1 and hub.count("GET", f"/{CHANGED_FILE}") == 1


def test_hub_main_resolves_to_branch_head(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    result = _ingest(hf_hub.source("main"), _settings(tmp_path), **FAST)
    assert result.revision == hf_hub.second_sha
    assert result.files[CHANGED_FILE]["sha256"] == _sha(hf_hub.files.second[CHANGED_FILE])
    assert hf_hub.hub.count("GET", f"/api/datasets/{hf_hub.repo_id}/revision/main") == 1


def test_hub_default_revision_comes_from_settings(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    s = _settings(tmp_path, hf_repo=hf_hub.repo_id, hf_revision=hf_hub.first_sha)
    result = _ingest("hf", s, **FAST)
    assert result.revision == hf_hub.first_sha
    assert result.source == f"hf://datasets/{hf_hub.repo_id}@{hf_hub.first_sha}"


def test_hub_branch_moves_between_runs(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    s = _settings(tmp_path)
    before = _ingest(hf_hub.source(), s, **FAST)
    third = hf_hub.hub.add_commit(hf_hub.repo_id, {**hf_hub.files.second, "payment.csv": b"loanId\nLL-I-1\n"})
    after = _ingest(hf_hub.source(), s, **FAST)
    assert before.revision == hf_hub.second_sha and after.revision == third
    assert after.files["payment.csv"]["size"] == len(b"loanId\nLL-I-1\n")


def test_hub_missing_repo_fails_at_once(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    sleeps: list[float] = []
    with pytest.raises(PermanentError) as err:
        _ingest(hf_hub.source(repo_id="nobody/nothing"), _settings(tmp_path), sleep=sleeps.append, **FAST)
    assert "nobody/nothing" in str(err.value)
    assert isinstance(err.value, PermanentError)
    assert len(hf_hub.hub.requests) == 1 and sleeps == []


def test_hub_missing_revision_fails_at_once(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    sleeps: list[float] = []
    with pytest.raises(PermanentError) as err:
        _ingest(hf_hub.source("no-such-branch"), _settings(tmp_path), sleep=sleeps.append, **FAST)
    assert "no-such-branch" in str(err.value) and hf_hub.repo_id in str(err.value)
    assert len(hf_hub.hub.requests) == 1 and sleeps == []

    hf_hub.hub.reset_counters()
    missing_sha = "0" * 40
    with pytest.raises(PermanentError, match=missing_sha):
        _ingest(hf_hub.source(missing_sha), _settings(tmp_path), sleep=sleeps.append, **FAST)
    assert len(hf_hub.hub.requests) == 1 and sleeps == []


def test_hub_missing_file_fails_at_once(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    hub = hf_hub.hub
    files = {k: v for k, v in hf_hub.files.second.items() if k != "payment.csv"}
    broken = hub.add_commit(hf_hub.repo_id, files, branch="broken")
    sleeps: list[float] = []
    # with the file listing: caught before any download
    with pytest.raises(PermanentError) as err:
        _ingest(hf_hub.source("broken"), _settings(tmp_path), sleep=sleeps.append, **FAST)
    assert "payment.csv" in str(err.value) and hf_hub.repo_id in str(err.value) and broken in str(err.value)
    assert hub.count(contains="/resolve/") == 0 and len(hub.requests) == 1 and sleeps == []

    # without it: the client's EntryNotFound on the file itself, still not retried
    hub.list_siblings = False
    hub.reset_counters()
    with pytest.raises(PermanentError) as err:
        _ingest(hf_hub.source("broken"), _settings(tmp_path / "b"), sleep=sleeps.append, **FAST)
    assert "payment.csv" in str(err.value) and hf_hub.repo_id in str(err.value)
    assert hub.count(contains="/resolve/", status=404) == 1 and sleeps == []
    assert hub.count(contains="/payment.csv") == 1


def test_hub_files_in_git_are_verified_by_their_blob_id(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    """A file stored in git (not LFS) has no sha256 in the listing: its git blob id is checked instead."""
    hub = hf_hub.hub
    hub.non_lfs.add("payment.csv")
    result = _ingest(hf_hub.source(), _settings(tmp_path), **FAST)
    assert result.details["verified"]["payment.csv"].startswith("git blob ")
    assert result.details["verified"]["loan.csv"] == "sha256 " + _sha(hf_hub.files.second["loan.csv"])
    _assert_describes(result, hf_hub.files.second)

    hub.tamper(hf_hub.repo_id, "payment.csv")
    with pytest.raises(PermanentError, match="payment.csv .* git blob id"):
        _ingest(hf_hub.source(), _settings(tmp_path / "other"), **FAST)


def test_hub_without_file_listing_uses_each_files_metadata(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    """An endpoint that lists no files: each file's checksum comes from its metadata at the commit."""
    hub = hf_hub.hub
    hub.list_siblings = False
    result = _ingest(hf_hub.source(), _settings(tmp_path), **FAST)
    _assert_describes(result, hf_hub.files.second)
    # one metadata request per file for its checksum, one more by the download itself
    assert hub.count("HEAD", f"/resolve/{hf_hub.second_sha}/") == 2 * len(DATA_FILES)
    hub.tamper(hf_hub.repo_id, CHANGED_FILE)
    with pytest.raises(PermanentError, match=CHANGED_FILE):
        _ingest(hf_hub.source(), _settings(tmp_path / "other"), **FAST)


def test_hub_gated_repo_names_the_token(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    hf_hub.hub.gated.add(hf_hub.repo_id)
    sleeps: list[float] = []
    with pytest.raises(PermanentError) as err:
        _ingest(hf_hub.source(), _settings(tmp_path), sleep=sleeps.append, **FAST)
    assert (
        "gated" in str(err.value)
        and "LOANRISK_HF_TOKEN" in str(err.value)
        and hf_hub.repo_id in str(err.value)
    )
    assert len(hf_hub.hub.requests) == 1 and sleeps == []
    # with a token, the fake Hub lets us in (and the token reaches it)
    result = _ingest(hf_hub.source(), _settings(tmp_path, hf_token="hf_test"), **FAST)
    assert result.revision == hf_hub.second_sha


def test_hub_transient_errors_are_retried_with_backoff(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    hub = hf_hub.hub
    hub.fail_next(1, 503, path_contains="/api/")  # the revision look-up
    hub.fail_next(1, 429, path_contains="/api/")
    hub.fail_next(1, 503, method="GET", path_contains=f"/{CHANGED_FILE}")  # one file's content
    sleeps: list[float] = []
    result = _ingest(
        hf_hub.source(), _settings(tmp_path, hf_max_attempts=3), sleep=sleeps.append, backoff_seconds=0.5
    )
    assert result.revision == hf_hub.second_sha
    _assert_describes(result, hf_hub.files.second)
    assert hub.count("GET", "/api/", status=503) == 1 and hub.count("GET", "/api/", status=429) == 1
    assert hub.count("GET", "/api/", status=200) == 1
    assert hub.count("GET", f"/{CHANGED_FILE}", status=503) == 1
    assert hub.count("GET", f"/{CHANGED_FILE}", status=200) == 1
    assert sleeps == [0.5, 1.0, 0.5]  # exponential per call: the look-up twice, then the file once


def test_hub_transient_errors_give_up_after_max_attempts(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    hub = hf_hub.hub
    hub.fail_next(100, 503, path_contains="/api/")
    sleeps: list[float] = []
    with pytest.raises(TransientError, match="3 attempt"):
        _ingest(
            hf_hub.source(), _settings(tmp_path, hf_max_attempts=3), sleep=sleeps.append, backoff_seconds=0.25
        )
    assert hub.count("GET", "/api/") == 3 and sleeps == [0.25, 0.5]
    assert not isinstance(TransientError("x"), PermanentError)


def test_hub_unreachable_endpoint_is_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub().start()
    endpoint = hub.endpoint
    hub.stop()  # nothing listens there any more
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    sleeps: list[float] = []
    with pytest.raises(TransientError):
        _ingest(
            "hf://datasets/keanteng/loan", _settings(tmp_path, hf_max_attempts=2), sleep=sleeps.append, **FAST
        )
    assert len(sleeps) == 1


def test_hub_corrupted_cache_entry_is_downloaded_again(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    s = _settings(tmp_path)
    first = _ingest(hf_hub.source(hf_hub.first_sha), s, **FAST)
    blob = Path(first.files["loan.csv"]["path"]).resolve()
    blob.write_bytes(b"garbage")
    hf_hub.hub.reset_counters()
    again = _ingest(hf_hub.source(hf_hub.first_sha), s, **FAST)
    assert not again.cached
    assert again.files["loan.csv"]["sha256"] == first.files["loan.csv"]["sha256"]
    assert hf_hub.hub.count("GET", "/loan.csv", status=200) == 1


def test_hub_offline_mode_uses_the_cached_ref(tmp_path: Path, hf_hub: HubFixture, monkeypatch) -> None:  # noqa: F811
    s = _settings(tmp_path)
    online = _ingest(hf_hub.source(), s, **FAST)
    hf_hub.hub.reset_counters()
    monkeypatch.setattr("huggingface_hub.constants.is_offline_mode", lambda: True)
    offline = _ingest(hf_hub.source(), s, **FAST)
    assert offline.revision == online.revision and offline.cached and hf_hub.hub.requests == []
    with pytest.raises(PermanentError, match="HF_HUB_OFFLINE"):
        _ingest(hf_hub.source("other-branch"), s, **FAST)


# --------------------------------------------------------------------------------------------------
# MLflow and Prefect


def _mlflow_run(settings: Settings) -> tuple[object, str]:
    import mlflow

    (settings.state_dir / "mlflow").mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    exp = client.create_experiment("ingest-test")
    return client, client.create_run(exp).info.run_id


def test_checksums_recorded_on_mlflow_run(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    from prefect.logging import disable_run_logger

    s = _settings(tmp_path)
    client, run_id = _mlflow_run(s)
    with disable_run_logger():
        result = ingest_task.fn(s, run_id, source=hf_hub.source())
    data = client.get_run(run_id).data
    assert data.params["data.source"] == hf_hub.source()
    assert data.params["data.revision"] == hf_hub.second_sha == data.tags["data.revision"]
    assert data.params["data.content_sha256"] == result.content_sha256 == data.tags["data.content_sha256"]
    for name in DATA_FILES:
        stem = Path(name).stem
        assert data.params[f"data.{stem}.sha256"] == _sha(hf_hub.files.second[name])
        assert data.params[f"data.{stem}.size"] == str(hf_hub.files.second[name].stat().st_size)
    # the same result again (a task retry) is accepted by MLflow
    record_ingest(result, run_id, s)
    assert json.loads(json.dumps(result.to_dict()))["revision"] == hf_hub.second_sha


def test_ingest_stage_applies_the_settings_retry_policy(tmp_path: Path) -> None:
    from prefect.states import Failed

    s = _settings(tmp_path, task_retries=3, task_retry_delay_seconds=0)
    t = ingest_task.task_for(s)
    assert t.name == "ingest" and t.retries == 3 and t.retry_delay_seconds == 0
    cond = t.retry_condition_fn
    assert cond is not None
    assert cond(t, None, Failed(data=PermanentError("missing"))) is False
    assert cond(t, None, Failed(data=MissingSourceFileError("missing"))) is False
    assert cond(t, None, Failed(data=ValueError("bad source"))) is False
    assert cond(t, None, Failed(data=TransientError("503"))) is True


@pytest.mark.slow
def test_prefect_retries_transient_but_not_permanent_failures(tmp_path: Path, hf_hub: HubFixture) -> None:  # noqa: F811
    """In a real Prefect run: a missing repo fails once; exhausted transient errors are retried by Prefect."""
    from prefect import flow

    s = _settings(tmp_path, hf_max_attempts=1, task_retries=2, task_retry_delay_seconds=0)
    hub = hf_hub.hub

    @flow(name="ingest-retry-test")
    def run(source: str) -> IngestResult:
        return ingest_task(s, source=source)

    with pytest.raises(PermanentError, match="nobody/nothing"):
        run(hf_hub.source(repo_id="nobody/nothing"))
    assert len(hub.requests) == 1  # no task retry either

    hub.reset_counters()
    hub.fail_next(2, 503, path_contains="/api/")  # fails attempts 1 and 2, attempt 3 succeeds
    result = run(hf_hub.source())
    assert result.revision == hf_hub.second_sha
    assert hub.count("GET", "/api/", status=503) == 2 and hub.count("GET", "/api/", status=200) == 1
