"""`labelmill submit`: a small pose3d run through the Ray Jobs API of a real local head, and the
command's error paths.

The head is started here (`ray start --head --block` of the project's venv on loopback, free ports,
its own temp dir) and stopped by its own process tree only: never `ray stop`, which stops every
Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from labelmill.pipelines.cli import main

OVERRIDES = ["keypoints.backend=precomputed", "fit.solver.max_iter=20"]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on loopback now."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tree(psutil, pid: int) -> dict[int, float]:
    """``pid`` and its descendants: pid -> start time (a reused pid is never touched)."""
    try:
        root = psutil.Process(pid)
        return {p.pid: p.create_time() for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        return {}


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except Exception:  # gone, or not ours to read
        return []


def _alive(psutil, processes: dict[int, float]) -> list[int]:
    alive = []
    for pid, created in processes.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    return alive


@contextlib.contextmanager
def local_head(num_cpus: int = 2, auth_mode: str = "disabled"):
    """A Ray head of our own on 127.0.0.1 with its dashboard (the Jobs API); yields its URL.

    `ray start --head --block` stays the parent of every process of the cluster, so the cluster
    is this process tree: on exit it gets SIGTERM (Ray stops its processes), and whatever of the
    tree recorded while it ran is still alive a few seconds later gets SIGKILL.
    """
    psutil = pytest.importorskip("psutil")
    ray_bin = Path(sys.executable).parent / "ray"
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env, metrics = _free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="lm-head-", dir="/tmp")  # short: Ray's socket paths must fit
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["RAY_AUTH_MODE"] = auth_mode  # disabled: a loopback test head (Ray >= 2.52 may turn token auth on)
    # the venv activated, as on a real head: the job's `python` is the venv's
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
           f"--metrics-export-port={metrics}", f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]
    log_path = Path(temp_dir) / "ray-start.log"
    with open(log_path, "wb") as log_file:
        head = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    seen: dict[int, float] = {}
    url = f"http://127.0.0.1:{dashboard}"
    local_head.pid = head.pid
    try:
        _wait_for_jobs_api(url, head, log_path, seen, psutil)
        yield url, (lambda: seen.update(_tree(psutil, head.pid)))
    finally:
        seen.update(_tree(psutil, head.pid))
        with contextlib.suppress(ProcessLookupError):
            head.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=15)
        deadline = time.monotonic() + 5
        while _alive(psutil, seen) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _alive(psutil, seen):
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        if head.poll() is None:
            head.kill()
            head.wait(timeout=5)
        subprocess.run(["rm", "-rf", temp_dir], check=False)
        local_head.last_processes = dict(seen)


def _wait_for_jobs_api(url: str, head, log_path: Path, seen: dict, psutil, timeout_s: float = 60.0) -> None:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    while True:
        seen.update(_tree(psutil, head.pid))
        if head.poll() is not None:
            pytest.fail(f"ray start --head exited {head.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            JobSubmissionClient(url)
            return
        except AuthenticationError:  # up, and refusing us: a token head
            return
        except Exception:  # not up yet
            if time.monotonic() > deadline:
                pytest.fail(f"the Jobs API at {url} did not come up in {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from labelmill.operators.synth.config import SynthConfig
    from labelmill.operators.synth.corpus import write_synthetic_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_synthetic_corpus(str(root), SynthConfig(num_videos=2, num_frames=12, seed=5))
    return root


def _needs_ray_default():
    import importlib.util

    pytest.importorskip("ray")
    missing = [m for m in ("aiohttp", "aiohttp_cors", "prometheus_client", "opencensus") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the Ray dashboard / Jobs API needs ray[default] (missing {', '.join(missing)}): "
                    "pip install -c constraints.txt -e '.[ray]'")


def test_submit_runs_pose3d_on_a_local_head(corpus, tmp_path, capsys):
    _needs_ray_default()
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "out"
    job_id = f"labelmill-test-{os.getpid()}-{time.time_ns()}"
    command = ["run", "pose3d", "--input", str(corpus / "manifest.csv"), "--output", str(out), "--engine", "ray"]
    for o in OVERRIDES:
        command += ["--set", o]
    with local_head() as (url, record):
        capsys.readouterr()
        rc = main(["submit", "--address", url, "--job-id", job_id, "--", *command])
        record()
        printed = capsys.readouterr()
        assert rc == 0, printed.err[-3000:] + printed.out[-3000:]
        # the job's logs came back on stdout: the run's own lines, its driver attached to our head
        assert f"dataset {out}/versions/" in printed.out and "inputs 2: written" in printed.out
        assert "ray engine: connecting to the Ray cluster at" in printed.out
        assert "embedded" not in printed.out
        assert f"job {job_id} SUCCEEDED" in printed.err

        from labelmill.infra.validate import validate_version

        assert validate_version(str(out)) == []

        assert main(["submit", "--address", url, "--status", job_id]) == 0
        assert capsys.readouterr().out.splitlines()[0] == f"{job_id} SUCCEEDED"
        assert main(["submit", "--address", url, "--stop", job_id]) == 1  # finished: nothing to stop
        assert "was not running (SUCCEEDED)" in capsys.readouterr().err

        # a job whose run fails (no such corpus: labelmill exits 2 in the job) exits 1, with the status
        bad = ["run", "pose3d", "--input", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "bad"), "--engine", "ray"]
        assert main(["submit", "--address", url, "--job-id", f"{job_id}-bad", "--", *bad]) == 1
        failed = capsys.readouterr()
        assert f"job {job_id}-bad FAILED" in failed.err and "missing.csv" in failed.out

        # with this head running and no RAY_ADDRESS, `--engine ray` still starts a cluster of its
        # own, as it logs (address="local"), instead of joining the head
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        probe = ("import logging, ray\nlogging.basicConfig(level=logging.INFO)\n"
                 "from labelmill.infra.config import load_config\nfrom labelmill.infra.engines.ray_engine import ensure_ray\n"
                 "from labelmill.pipelines.config import Pose3dConfig\n"
                 "ensure_ray(load_config(Pose3dConfig, None, ['engine.ray_num_cpus=1']).engine)\n"
                 "print('GCS', ray.get_runtime_context().gcs_address)\n")
        ran = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr[-2000:]
        assert "starting an embedded local Ray cluster" in ran.stderr
        head_gcs = [a.split("=", 1)[1] for p in psutil.Process(local_head.pid).children(recursive=True)
                    for a in _cmdline(p) if a.startswith("--gcs_server_port=")]
        assert head_gcs and not ran.stdout.strip().endswith(f":{head_gcs[0]}"), (ran.stdout, head_gcs)
    assert local_head.last_processes, "the head's processes were recorded"
    assert _alive(psutil, local_head.last_processes) == [], "the head's processes outlived it"


def _submit(*argv: str) -> int:
    return main(["submit", *argv])


def test_unreachable_address_says_what_to_check(capsys):
    pytest.importorskip("ray")
    (port,) = _free_ports(1)  # nothing listens there
    address = f"http://127.0.0.1:{port}"
    assert _submit("--address", address, "--", "run", "pose3d", "--input", "m.csv", "--output", "o") == 1
    err = capsys.readouterr().err
    assert f"cannot reach the Ray Jobs API at {address}" in err
    assert "dashboard" in err and "8265" in err and "Traceback" not in err
    assert _submit("--address", address, "--status", "raysubmit_x") == 1
    assert f"cannot reach the Ray Jobs API at {address}" in capsys.readouterr().err


def test_token_auth_refusal_names_what_to_set(capsys):
    """A head that answers 401 (token auth on, no token sent): the message says what to set."""
    pytest.importorskip("ray")
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = b"Unauthorized: missing or invalid authentication token"
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"http://127.0.0.1:{server.server_address[1]}"
        assert _submit("--address", address, "--status", "raysubmit_x") == 1
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert f"the Ray head at {address} requires token authentication" in err
    assert "RAY_AUTH_MODE=token" in err and "RAY_AUTH_TOKEN" in err and "RAY_AUTH_MODE=disabled" in err


@pytest.mark.parametrize("argv, expected", [
    (["--address", "http://127.0.0.1:1", "--", "eval", "pose3d"], "runs `run ...` commands; got `eval`"),
    (["--address", "http://127.0.0.1:1", "--", "run", "pose3d", "--output", "o"], "does not parse as a labelmill command"),
    (["--address", "http://127.0.0.1:1", "--", "run", "nosuchpipeline"], "does not parse as a labelmill command"),
    (["--address", "http://127.0.0.1:1"], "nothing to submit"),
    (["--address", "http://127.0.0.1:1", "--status", "j", "--", "run", "pose3d"], "take a job id, not a command"),
    (["--address", "127.0.0.1:6379", "--", "run", "pose3d", "--input", "m", "--output", "o"], "is not a URL"),
])
def test_usage_errors_exit_2_before_anything_is_sent(argv, expected, capsys, monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert _submit(*argv) == 2
    assert expected in capsys.readouterr().err


def test_address_from_the_environment_and_runtime_env_file(tmp_path, monkeypatch, capsys):
    from labelmill.pipelines.commands.submit import load_runtime_env, resolve_address

    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is no Jobs API URL
    assert _submit("--", "run", "pose3d", "--input", "m", "--output", "o") == 2
    assert "--address http://HEAD:8265" in capsys.readouterr().err
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://head:8265/")
    assert resolve_address(None) == "http://head:8265"

    spec = tmp_path / "env.yaml"
    spec.write_text("pip: ['labelmill @ file:///wheels/labelmill-0.1.0-py3-none-any.whl']\nworking_dir: /old\n")
    assert load_runtime_env(str(spec), str(tmp_path)) == {
        "pip": ["labelmill @ file:///wheels/labelmill-0.1.0-py3-none-any.whl"], "working_dir": str(tmp_path)}
    assert load_runtime_env(None, None) is None
    spec.write_text("- just\n- a list\n")
    assert _submit("--address", "http://127.0.0.1:1", "--runtime-env", str(spec), "--",
                   "run", "pose3d", "--input", "m", "--output", "o") == 2
    assert "a runtime env is a YAML mapping" in capsys.readouterr().err


def test_ray_engine_connection_refusal_says_what_to_set(monkeypatch):
    """`--engine ray` with an address: Ray's bare ConnectionError (what a token-auth head gives a
    driver without its token) comes with what to check and set."""
    ray = pytest.importorskip("ray")
    from labelmill.infra.config import load_config
    from labelmill.infra.engines.ray_engine import ensure_ray
    from labelmill.pipelines.config import Pose3dConfig

    def refuse(address=None, **kwargs):
        raise ConnectionError(f"Failed to connect to Ray cluster at {address}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    cfg = load_config(Pose3dConfig, None, ["engine.ray_address=10.9.8.7:6379"])
    with pytest.raises(ConnectionError) as raised:
        ensure_ray(cfg.engine)
    message = str(raised.value)
    assert message.startswith("Failed to connect to Ray cluster at 10.9.8.7:6379. Check that a Ray head runs at 10.9.8.7:6379")
    assert "RAY_AUTH_MODE=token" in message and "RAY_AUTH_TOKEN" in message and "RAY_AUTH_MODE=disabled" in message
