"""Ray's helper processes at SCHED_IDLE: the right processes are changed, the others are not."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from matforge.pretrain.helper_priority import children_of, idle_policy_supported, idle_ray_helpers, is_idle_policy

pytestmark = pytest.mark.skipif(not idle_policy_supported(), reason="needs Linux SCHED_IDLE and /proc")

TITLES = ("ray::SomeHelperActor", "ray::IDLE", "ray::RayTrainWorker", "ray::OtherHelper")


@pytest.fixture
def fake_raylet():
    """A shell standing in for the raylet, with four children whose titles (argv[0]) are Ray's."""
    script = " ".join(f"(exec -a {title} sleep 60) &" for title in TITLES) + " wait"
    parent = subprocess.Popen(["bash", "-c", script])
    try:
        deadline = time.monotonic() + 10
        while len(children_of(parent.pid)) < len(TITLES):
            assert time.monotonic() < deadline, "the fake raylet's children did not start"
            time.sleep(0.02)
        by_title = {}
        for pid in children_of(parent.pid):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                by_title[f.read().split(b"\0")[0].decode()] = pid
        yield parent.pid, by_title
    finally:
        for pid in children_of(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()


def test_helpers_go_idle_and_workers_do_not(fake_raylet):
    raylet, pids = fake_raylet
    training = {pids["ray::RayTrainWorker"]}
    changed = idle_ray_helpers(raylet, training)
    assert sorted(changed) == sorted([pids["ray::SomeHelperActor"], pids["ray::OtherHelper"]])
    assert is_idle_policy(pids["ray::SomeHelperActor"]) and is_idle_policy(pids["ray::OtherHelper"])
    # the training worker and the pooled worker (which may become a training worker) keep their policy
    assert not is_idle_policy(pids["ray::RayTrainWorker"])
    assert not is_idle_policy(pids["ray::IDLE"])
    # a second call finds nothing new to change
    assert idle_ray_helpers(raylet, training) == []


def test_other_parents_children_are_untouched(fake_raylet):
    raylet, pids = fake_raylet
    other = subprocess.Popen(["sleep", "60"])  # another "raylet", without children
    try:
        assert idle_ray_helpers(other.pid, set()) == []
    finally:
        other.kill()
        other.wait()
    assert not any(is_idle_policy(pid) for pid in pids.values())
    assert not is_idle_policy(raylet)


def test_every_thread_of_a_helper_goes_idle(tmp_path):
    """A helper with several threads (as every Ray worker has): all of them, not just the main one."""
    code = "import threading, time\n" \
           "for _ in range(3): threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n" \
           "print('ready', flush=True); time.sleep(60)\n"
    parent = subprocess.Popen(["bash", "-c", f"python3 -c \"{code}\" & wait"], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "ready"
        (helper,) = children_of(parent.pid)
        assert idle_ray_helpers(parent.pid, set()) == [helper]
        threads = [int(t) for t in os.listdir(f"/proc/{helper}/task")]
        assert len(threads) == 4
        assert all(os.sched_getscheduler(t) == os.SCHED_IDLE for t in threads)
    finally:
        for pid in children_of(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()


TASK_LOOP_PROBE = r"""
import json, os, threading
from matforge.pretrain.helper_priority import idle_task_loop_thread

out = {"from_main": idle_task_loop_thread(), "main_after_own_call": os.sched_getscheduler(0)}

def train():
    out["first"] = idle_task_loop_thread()
    out["second"] = idle_task_loop_thread()
    out["trainer"] = os.sched_getscheduler(threading.get_native_id())
    child = threading.Thread(target=lambda: out.update(child=os.sched_getscheduler(threading.get_native_id())))
    child.start(); child.join()

t = threading.Thread(target=train); t.start(); t.join()
out["main"] = os.sched_getscheduler(threading.main_thread().native_id)
print(json.dumps(out))
"""


def test_task_loop_thread_goes_idle_and_the_training_thread_does_not():
    """Called from a training thread: the process's main thread (Ray's task loop) goes idle once; the
    caller and the threads it starts later keep the normal policy; from the main thread: nothing."""
    import json
    import sys

    # a child process: the policy of this test process's own main thread could not be undone
    done = subprocess.run([sys.executable, "-c", TASK_LOOP_PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["from_main"] is False and out["main_after_own_call"] == os.SCHED_OTHER
    assert out["first"] is True and out["second"] is False
    assert out["main"] == os.SCHED_IDLE
    assert out["trainer"] == os.SCHED_OTHER and out["child"] == os.SCHED_OTHER
