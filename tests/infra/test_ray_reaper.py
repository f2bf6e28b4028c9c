"""The embedded Ray cluster leaves nothing running when its driver is SIGKILLed."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil", reason="the Ray watchdog needs psutil (the ray extra installs it)")
pytest.importorskip("ray", reason="needs ray (pip install -e '.[ray]')")

DRIVER = """
import sys, time
from labelmill.infra.engines.config import EngineConfig
from labelmill.infra.engines.ray_engine import ensure_ray
ensure_ray(EngineConfig(name="ray", ray_num_cpus=1))
import ray
@ray.remote(num_cpus=0.5)
def f():
    return 1
assert ray.get(f.remote()) == 1
print("ready", flush=True)
time.sleep(600)
"""


def test_sigkill_of_the_driver_leaves_no_process_of_its_cluster():
    # a short temp dir of its own: Ray's socket paths under pytest's tmp_path exceed AF_UNIX's 107 bytes
    tmp_path = Path(tempfile.mkdtemp(prefix="lmr-", dir="/tmp"))
    env = dict(os.environ, TMPDIR=str(tmp_path), RAY_AUTH_MODE="disabled")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    try:
        line = driver.stdout.readline().strip()
        assert line == "ready", driver.stderr.read()[-2000:] if driver.poll() is not None else line
        time.sleep(2)  # let the watchdog record the cluster's processes
        cluster = {p.pid: p.create_time() for p in psutil.Process(driver.pid).children(recursive=True)}
        names = {psutil.Process(pid).name() for pid in cluster}
        assert any("raylet" in n for n in names) and any("gcs" in n for n in names), names
        temp_dirs = [d for d in tmp_path.iterdir() if d.name.startswith("labelmill-ray-")]
        assert len(temp_dirs) == 1
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = [pid for pid, created in cluster.items() if _running(pid, created)]
            if not left and not temp_dirs[0].exists():
                break
            time.sleep(0.5)
        assert not [(pid, psutil.Process(pid).name()) for pid, c in cluster.items() if _running(pid, c)]
        assert not temp_dirs[0].exists()
    finally:
        if driver.poll() is None:
            driver.kill()
        shutil.rmtree(tmp_path, ignore_errors=True)


def _running(pid, created):
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - created) < 1e-3 and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
