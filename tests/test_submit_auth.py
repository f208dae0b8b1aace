"""``bluff submit`` against a real Ray cluster with token authentication.

One module-scoped ``ray start --head --block`` with ``RAY_AUTH_MODE=token``, its token in a file,
the dashboard and every other port on free ports, and HOME/RAY_TMPDIR in a temporary folder (so
neither the real ~/.ray nor /tmp/ray is touched). The client runs as a separate process (the real
``bluff submit`` CLI, or ``submit()`` from a small script), because Ray caches the auth mode of a
process when it first loads, and this test session's own Ray runs with ``RAY_AUTH_MODE=disabled``.
The cluster is stopped at the end by signalling the process group this module started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bluff_ray.run import submit as submit_mod

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(home: Path) -> dict:
    """This session's environment without any Ray auth or address setting, with an empty HOME."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    }
    env["HOME"] = str(home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


class TokenCluster:
    def __init__(self, base: Path, token: str, token_file: Path, dashboard: str, proc: subprocess.Popen):
        self.base, self.token, self.token_file, self.dashboard, self.proc = base, token, token_file, dashboard, proc

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            with urllib.request.urlopen(
                urllib.request.Request(self.dashboard + path, headers=headers), timeout=10
            ) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


@pytest.fixture(scope="module")
def token_cluster():
    # a short base path: Ray's Unix sockets live under RAY_TMPDIR and paths are limited to ~107 bytes
    base = Path(tempfile.mkdtemp(prefix="bluff-rt-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_file = base / "cluster-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    (base / "home").mkdir()
    env = _clean_env(base / "home")
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_TMPDIR=str(base / "r"),
        # the job's driver reuses this session's digits checkpoint instead of training one
        BLUFF_CACHE=os.environ.get("BLUFF_CACHE") or str(Path.home() / ".cache" / "bluff_ray"),
    )
    dash = _free_port()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={_free_port()}",
        f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--num-cpus=2",
        f"--object-store-memory={200 * 2**20}",
        f"--temp-dir={base / 'r'}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        "--disable-usage-stats",
    ]
    log = open(base / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = TokenCluster(base, token, token_file, f"http://127.0.0.1:{dash}", proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}: {(base / 'ray-start.log').read_text()[-3000:]}")
            try:
                if cluster.get("/api/version", token)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard did not come up: {(base / 'ray-start.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield cluster
    finally:
        # only the processes of the session started above: its process group
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            os.killpg(proc.pid, signal.SIGKILL)  # Ray drains for up to 30 s; nothing of it is needed
        except ProcessLookupError:
            pass
        proc.wait(10)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    """A working dir to ship: a copy of the bluff_ray package and a tiny digits run config."""
    wd = tmp_path_factory.mktemp("submit-wd")
    shutil.copytree(REPO / "bluff_ray", wd / "bluff_ray", ignore=shutil.ignore_patterns("__pycache__", "_viewer"))
    (wd / "run.toml").write_text('model = "digits"\ndata = "digits"\n')
    return wd


def run_cli(args: list[str], env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bluff_ray.cli", "submit", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_cluster_requires_a_token(token_cluster):
    """The fixture is what it claims: the Jobs API refuses requests without the token, or with another."""
    assert token_cluster.get("/api/jobs/")[0] == 401
    assert token_cluster.get("/api/jobs/", "0" * 64)[0] == 403
    assert token_cluster.get("/api/jobs/", token_cluster.token)[0] == 200


def test_submit_a_run_with_auth_token_path(token_cluster, job_dir, tmp_path):
    """`bluff submit --auth-token-path` runs a real (tiny) digits run as a Ray job; the token stays out of
    the job and of every output."""
    out = tmp_path / "results"
    env = _clean_env(tmp_path)  # no token anywhere but the file given on the command line
    proc = run_cli(
        [
            "--address",
            token_cluster.dashboard,
            "--config",
            "run.toml",
            "--working-dir",
            str(job_dir),
            "--auth-token-path",
            str(token_cluster.token_file),
            "--",
            "--out",
            str(out),
            "--classes",
            "0,1",
            "--images-per-class",
            "2",
            "--attack-steps",
            "1",
            "--no-assets-enabled",
            "--num-workers",
            "1",
            "--no-progress",
        ],
        env,
        job_dir,
        timeout=600,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "SUCCEEDED" in proc.stdout
    assert (out / "manifest.json").is_file()
    assert token_cluster.token not in text
    status, body = token_cluster.get("/api/jobs/", token_cluster.token)
    assert status == 200
    jobs = [j for j in json.loads(body) if (j.get("metadata") or {}).get("tool") == "bluff_ray"]
    assert jobs and all(j["status"] == "SUCCEEDED" for j in jobs)
    assert "bluff_ray.cli run --config run.toml" in jobs[0]["entrypoint"]
    assert token_cluster.token not in body.decode()  # not in any entrypoint, runtime env or metadata


TRIVIAL = textwrap.dedent("""
    import sys
    from bluff_ray.run.submit import JobRequest, submit
    req = JobRequest(entrypoint="python -c \\"import ray; ray.init(); print('cpus', ray.cluster_resources()['CPU'])\\"",
                     runtime_env={}, metadata={"tool": "bluff-test-trivial"})
    sys.exit(submit(req, sys.argv[1], poll_s=0.5))
""")


@pytest.mark.parametrize("source", ["RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "default file"])
def test_submit_finds_the_token_the_ray_way(token_cluster, tmp_path, source):
    """With RAY_AUTH_MODE=token, submit() authenticates with the token from each of Ray's three sources."""
    env = _clean_env(tmp_path)
    env["RAY_AUTH_MODE"] = "token"
    if source == "RAY_AUTH_TOKEN_PATH":
        env["RAY_AUTH_TOKEN_PATH"] = str(token_cluster.token_file)
    elif source == "RAY_AUTH_TOKEN":
        env["RAY_AUTH_TOKEN"] = token_cluster.token
    else:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text(token_cluster.token + "\n")
    proc = subprocess.run(
        [sys.executable, "-c", TRIVIAL, token_cluster.dashboard],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "cpus 2.0" in proc.stdout and "SUCCEEDED" in proc.stdout
    assert token_cluster.token not in proc.stdout + proc.stderr


def _one_paragraph_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # one paragraph, nothing else
    assert proc.stdout.strip() == ""
    return lines[0]


def test_missing_token_is_a_clear_error(token_cluster, job_dir, tmp_path):
    env = _clean_env(tmp_path)  # no RAY_AUTH_MODE, no token
    msg = _one_paragraph_error(
        run_cli(
            ["--address", token_cluster.dashboard, "--config", "run.toml", "--working-dir", str(job_dir)], env, job_dir
        )
    )
    assert "uses token authentication and no token was sent" in msg
    assert "RAY_AUTH_MODE is not 'token'" in msg
    for hint in ("--auth-token-path", "RAY_AUTH_TOKEN_PATH", "ray get-auth-token"):
        assert hint in msg
    # token mode, but no token in any of Ray's places
    env["RAY_AUTH_MODE"] = "token"
    msg = _one_paragraph_error(
        run_cli(
            ["--address", token_cluster.dashboard, "--config", "run.toml", "--working-dir", str(job_dir)], env, job_dir
        )
    )
    assert "no token was found" in msg


def test_wrong_token_is_a_clear_error(token_cluster, job_dir, tmp_path):
    wrong = tmp_path / "other-cluster-token"
    wrong.write_text(secrets.token_hex(32))
    env = _clean_env(tmp_path)
    msg = _one_paragraph_error(
        run_cli(
            [
                "--address",
                token_cluster.dashboard,
                "--config",
                "run.toml",
                "--working-dir",
                str(job_dir),
                "--auth-token-path",
                str(wrong),
            ],
            env,
            job_dir,
        )
    )
    assert f"refused the token read from the file {wrong}" in msg and "not this cluster's token" in msg
    assert wrong.read_text() not in msg
    # the same through Ray's variables
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="x" * 64)
    msg = _one_paragraph_error(
        run_cli(
            ["--address", token_cluster.dashboard, "--config", "run.toml", "--working-dir", str(job_dir)], env, job_dir
        )
    )
    assert "refused the token read from RAY_AUTH_TOKEN" in msg and "x" * 64 not in msg


def test_unreadable_token_file_is_a_clear_error(token_cluster, job_dir, tmp_path):
    env = _clean_env(tmp_path)
    msg = _one_paragraph_error(
        run_cli(
            [
                "--address",
                token_cluster.dashboard,
                "--config",
                "run.toml",
                "--working-dir",
                str(job_dir),
                "--auth-token-path",
                str(tmp_path / "nope"),
            ],
            env,
            job_dir,
        )
    )
    assert "--auth-token-path" in msg and "cannot read a token there" in msg
    (tmp_path / "empty").write_text("\n")
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "empty"))
    msg = _one_paragraph_error(
        run_cli(
            ["--address", token_cluster.dashboard, "--config", "run.toml", "--working-dir", str(job_dir)], env, job_dir
        )
    )
    assert "RAY_AUTH_TOKEN_PATH" in msg and "empty" in msg


def test_unreachable_dashboard_is_a_clear_error(job_dir, tmp_path):
    env = _clean_env(tmp_path)
    msg = _one_paragraph_error(
        run_cli(
            ["--address", f"http://127.0.0.1:{_free_port()}", "--config", "run.toml", "--working-dir", str(job_dir)],
            env,
            job_dir,
        )
    )
    assert "cannot reach the Ray dashboard" in msg


# --- without a cluster: the token never goes into a job request ---------------------------------------


def test_job_request_never_carries_the_token(tmp_path, monkeypatch):
    token = secrets.token_hex(32)
    (tmp_path / "tok").write_text(token)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    tmp_path = tmp_path / "wd"  # the working dir, without the token file
    tmp_path.mkdir()
    (tmp_path / "run.toml").write_text('model = "digits"\n')
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "ray_auth_mode"):
        with pytest.raises(ValueError, match="do not pass"):
            submit_mod.build_request(str(tmp_path / "run.toml"), str(tmp_path), env={key: "x"})
    with pytest.raises(ValueError, match="token appears in the job request"):
        submit_mod.build_request(str(tmp_path / "run.toml"), str(tmp_path), ["--out", f"s3://b/{token}"])
    with pytest.raises(ValueError, match="token appears in the job request"):
        submit_mod.build_request(str(tmp_path / "run.toml"), str(tmp_path), env={"NOTE": token})
    req = submit_mod.build_request(str(tmp_path / "run.toml"), str(tmp_path), ["--classes", "0,1"])
    assert token not in repr(req)


def test_auth_token_path_sets_ray_variables_for_this_process(tmp_path):
    """In a process of its own (Ray caches the auth mode per process): --auth-token-path's helper sets
    Ray's variables, drops RAY_AUTH_TOKEN (it would win over the file) and makes Ray's loader use the file."""
    (tmp_path / "tok").write_text("abc" * 10)
    script = textwrap.dedent("""
        import os, sys
        import ray._raylet  # loaded first, as in a process that already imported ray
        from bluff_ray.run import submit
        path = submit.use_token_file(sys.argv[1])
        from ray._raylet import AuthenticationTokenLoader
        print(os.environ["RAY_AUTH_MODE"], os.environ["RAY_AUTH_TOKEN_PATH"] == path, "RAY_AUTH_TOKEN" in os.environ,
              AuthenticationTokenLoader.instance().get_raw_token(ignore_auth_mode=False) == "abc" * 10)
        try:
            submit.use_token_file(sys.argv[1] + ".missing")
        except submit.SubmitError as e:
            print("error:", e)
    """)
    env = _clean_env(tmp_path)
    env.update(RAY_AUTH_MODE="disabled", RAY_AUTH_TOKEN="from-env-would-win")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "tok")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "token True False True"
    assert lines[1].startswith("error: --auth-token-path") and "cannot read a token there" in lines[1]


def test_dry_run_and_help_mention_auth():
    out = subprocess.run(
        [sys.executable, "-m", "bluff_ray.cli", "submit", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for word in ("--auth-token-path", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"):
        assert word in out


def test_token_file_inside_the_working_dir_is_refused(tmp_path, monkeypatch):
    """The working dir is uploaded with the job: a token file inside it would travel to the cluster."""
    (tmp_path / "run.toml").write_text('model = "digits"\n')
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "ray-token").write_text(secrets.token_hex(32))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "secrets" / "ray-token"))
    with pytest.raises(ValueError, match="lies inside the working dir"):
        submit_mod.build_request(str(tmp_path / "run.toml"), str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # the default ~/.ray/auth_token inside the working dir, too
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    with pytest.raises(ValueError, match="lies inside the working dir"):
        submit_mod.build_request(str(tmp_path / "run.toml"), str(tmp_path))
    elsewhere = tmp_path / "wd"
    elsewhere.mkdir()
    (elsewhere / "run.toml").write_text('model = "digits"\n')
    assert submit_mod.build_request(str(elsewhere / "run.toml"), str(elsewhere)).entrypoint.endswith("run.toml")
