"""Code revision and container image in every attempt_start, and a code_change record when they move."""
import json
import shutil
import subprocess

import pytest

from saul import provenance
from saul.resilience import ledger
from saul.resilience.attempt import Attempt
from saul.train.distributed import RankInfo

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def make_repo(path):
    path.mkdir()
    git(path, "init", "-q")
    (path / "code.py").write_text("x = 1\n")
    git(path, "add", "code.py")
    git(path, "commit", "-q", "-m", "one")
    return path


def head(repo) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


@needs_git
def test_git_revision_dirty_flag_and_diff_digest(tmp_path):
    repo = make_repo(tmp_path / "repo")
    clean = provenance.code_revision(repo, stamp=tmp_path / "no-stamp.json")
    assert clean == {"revision": head(repo), "dirty": False, "diff_sha1": None, "source": "git"}
    (repo / "code.py").write_text("x = 2\n")
    first = provenance.code_revision(repo)
    (repo / "code.py").write_text("x = 3\n")
    second = provenance.code_revision(repo)
    assert first["dirty"] and second["dirty"] and first["revision"] == second["revision"] == head(repo)
    assert first["diff_sha1"] != second["diff_sha1"]  # two dirty attempts are still told apart
    (repo / "untracked.txt").write_text("not code\n")
    (repo / "code.py").write_text("x = 1\n")
    assert provenance.code_revision(repo)["dirty"] is False  # untracked files are not looked at


def test_without_git_the_image_stamp_says_the_revision(tmp_path, monkeypatch):
    stamp = tmp_path / "image-stamp.json"
    stamp.write_text(json.dumps({"git_revision": "a" * 40, "git_dirty": True, "built_at": "2026-12-01T10:00:00Z"}))
    bin_dir = tmp_path / "bin"  # a PATH with python but no git, as in an image without git
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    rev = provenance.code_revision(tmp_path, stamp=stamp)
    assert rev["revision"] == "a" * 40 and rev["dirty"] is True and rev["source"] == "image-stamp"
    assert "git not installed" in rev["note"]
    unknown = provenance.code_revision(tmp_path, stamp=tmp_path / "absent.json")
    assert unknown["revision"] is None and unknown["source"] == "unknown"


@needs_git
def test_a_folder_that_is_no_repository_falls_back_to_the_stamp(tmp_path):
    stamp = tmp_path / "stamp.json"
    stamp.write_text(json.dumps({"git_revision": "b" * 40, "git_dirty": False, "built_at": "x"}))
    rev = provenance.code_revision(tmp_path, stamp=stamp)
    assert rev["source"] == "image-stamp" and "not a git repository" in rev["note"]


def test_container_image_from_the_runtime_environment(tmp_path):
    stamp = tmp_path / "stamp.json"
    stamp.write_text(json.dumps({"git_revision": "c" * 40, "git_dirty": False, "built_at": "2026-12-01"}))
    assert provenance.container_image({}, stamp) is None
    image = provenance.container_image({"APPTAINER_CONTAINER": "/images/saul.sif"}, stamp)
    assert image == {"path": "/images/saul.sif", "stamp": {"git_revision": "c" * 40, "git_dirty": False,
                                                           "built_at": "2026-12-01"}}
    assert provenance.container_image({"SINGULARITY_CONTAINER": "/x.sif"}, tmp_path / "none")["stamp"] is None


def info(rank=0):
    return RankInfo(rank, rank, 2, 2, 0, 1, "4242", "127.0.0.1", 29500, "host")


@needs_git
def test_attempt_start_records_code_and_image_and_a_change_adds_code_change(tmp_path, monkeypatch, capsys):
    repo = make_repo(tmp_path / "repo")
    monkeypatch.setattr(provenance, "REPO_ROOT", repo)  # the repository "the ranks run from"
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/saul.sif")
    path = tmp_path / "ledger.jsonl"

    def attempt():
        a = Attempt(path, info(), "cpt")
        a.start()
        a.end(75, "signal SIGUSR2", 4, step_end=4)
        return a

    first = attempt()
    (repo / "code.py").write_text("x = 5\n")
    git(repo, "commit", "-q", "-am", "two")
    second = attempt()
    attempt()  # same code again: no change record
    records = ledger.read(path)
    assert [r["event"] for r in records] == ["attempt_start", "attempt_end", "code_change", "attempt_start",
                                             "attempt_end", "attempt_start", "attempt_end"]
    start = records[0]
    assert start["code"]["revision"] and start["code"]["source"] == "git" and start["stage"] == "cpt"
    assert start["image"] == {"path": "/images/saul.sif", "stamp": provenance.read_stamp()}
    change = records[2]
    assert change["attempt"] == second.number == first.number + 1 == 2
    assert change["changes"] == [["code.revision", start["code"]["revision"], head(repo)]]
    err = capsys.readouterr().err
    assert err.count("warning: the code or image changed since attempt 1: code.revision:") == 1
    assert records[1] == dict(records[1], event="attempt_end", exit_code=75, reason="signal SIGUSR2", step=4,
                              step_end=4, job_id="4242", attempt=1)


def test_only_rank_0_writes_and_an_end_is_written_once(tmp_path):
    path = tmp_path / "ledger.jsonl"
    other = Attempt(path, info(rank=1), "prepare", broadcast_int=lambda n: 7)
    assert other.start() == 7  # the number comes from rank 0
    other.end(0, "done")
    assert not path.exists()
    main = Attempt(path, info(), "prepare")
    main.start()
    main.end(2, "bad input")
    main.end(1, "a crash after the end")  # changes nothing
    assert [(r["event"], r.get("exit_code")) for r in ledger.read(path)] == [("attempt_start", None),
                                                                              ("attempt_end", 2)]


def test_changes_compare_code_and_image_stamps():
    before = {"code": {"revision": "1", "dirty": False, "diff_sha1": None},
              "image": {"path": "/a.sif", "stamp": {"built_at": "d1", "git_revision": "1"}}}
    after = {"code": {"revision": "1", "dirty": True, "diff_sha1": "ff"},
             "image": {"path": "/a.sif", "stamp": {"built_at": "d2", "git_revision": "1"}}}
    assert provenance.changes(before, after) == [["code.dirty", False, True], ["code.diff_sha1", None, "ff"],
                                                 ["image.stamp.built_at", "d1", "d2"]]
    assert provenance.changes({"event": "attempt_start"}, after) == []  # a start from before provenance
    assert provenance.changes(None, after) == []
