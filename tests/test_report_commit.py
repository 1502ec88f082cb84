"""pretrain.report_commit: a rank waits until the controller's poll has taken its queued report."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from matforge.pretrain import report_commit


def test_outside_ray_train_there_is_nothing_to_wait_for():
    assert report_commit.wait_until_report_taken(timeout_s=0.1) is None


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> queue.Queue:
    q: queue.Queue = queue.Queue()
    monkeypatch.setattr(report_commit, "_report_queue", lambda: q)
    return q


def test_waits_until_the_poll_takes_the_report(reports):
    reports.put({"step": 8})

    def poll() -> None:  # what Ray Train's worker does when the controller polls it
        time.sleep(0.2)
        reports.get_nowait()
        reports.task_done()

    threading.Thread(target=poll).start()
    start = time.monotonic()
    assert report_commit.wait_until_report_taken(timeout_s=5.0) is True
    assert time.monotonic() - start >= 0.19 and reports.unfinished_tasks == 0


def test_gives_up_after_the_timeout_and_leaves_the_report_queued(reports):
    reports.put({"step": 8})
    assert report_commit.wait_until_report_taken(timeout_s=0.05) is False
    assert reports.qsize() == 1


def test_an_empty_queue_returns_at_once(reports):
    start = time.monotonic()
    assert report_commit.wait_until_report_taken(timeout_s=5.0) is True
    assert time.monotonic() - start < 0.1


def test_a_missing_queue_where_one_is_expected_is_warned_about_once(monkeypatch, capsys):
    monkeypatch.setattr(report_commit, "_report_queue", lambda: None)
    monkeypatch.setattr(report_commit, "_warned", False)
    assert report_commit.wait_until_report_taken(expected=True) is None
    assert report_commit.wait_until_report_taken(expected=True) is None
    err = capsys.readouterr().err
    assert err.count("WARNING: Ray") == 1 and "tested with Ray 2.60" in err and "lose that checkpoint" in err
    monkeypatch.setattr(report_commit, "_warned", False)
    assert report_commit.wait_until_report_taken() is None      # local mode: nothing expected, nothing said
    assert capsys.readouterr().err == ""
