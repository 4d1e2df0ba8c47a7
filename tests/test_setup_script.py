"""scripts/setup.sh waits for the apt / dpkg lock another process holds, with a timeout and a clear line.

Run as root on a Debian-like machine with Fashion-MNIST installed: the command under the lock is a real
``apt-get install --no-download`` of that already-installed package, which takes the dpkg lock and
changes nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCKS = ["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"]
HOLD = "import fcntl, sys, time\n" \
       "files = [open(p, 'w') for p in sys.argv[2:]]\n" \
       "[fcntl.lockf(f, fcntl.LOCK_EX) for f in files]\n" \
       "print('locked', flush=True)\n" \
       "time.sleep(float(sys.argv[1]))\n"

pytestmark = pytest.mark.skipif(
    shutil.which("apt-get") is None or os.geteuid() != 0 or not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs root, apt-get and the dataset-fashion-mnist package",
)


def hold_lock(seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(seconds), *LOCKS], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def apt_wait(timeout_s: int) -> subprocess.CompletedProcess:
    script = ". scripts/apt_wait.sh && apt_wait apt-get install -y -q --no-download dataset-fashion-mnist"
    env = {**os.environ, "MLCL_APT_LOCK_TIMEOUT": str(timeout_s), "MLCL_APT_LOCK_POLL_S": "1"}
    return subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True)


def test_apt_waits_for_a_lock_that_is_released():
    holder = hold_lock(3)
    result = apt_wait(60)
    holder.wait()
    assert result.returncode == 0, result.stderr  # it got the lock once the holder let go
    assert "waiting up to 60 s" in result.stderr


def test_apt_gives_up_after_the_timeout_with_one_line():
    holder = hold_lock(30)
    try:
        result = apt_wait(2)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert f"held by process {holder.pid}" in last and "after 2 s" in last and "run scripts/setup.sh again" in last
