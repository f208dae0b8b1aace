"""``bluff submit``: send a ``bluff run`` to a Ray cluster as a Ray Job.

The job ships the code (``working_dir``, honouring .gitignore/.rayignore) and runs
``python -m bluff_ray.cli run --config <file>`` on the head node; torch, ray and the other
dependencies come from the cluster image (deploy/Dockerfile), not from a runtime-env pip install
(slow and fragile at scale). The config file must lie inside the working dir so it travels with it.
Credentials are never put in the entrypoint: give the workers an IAM role/instance profile, or
set the standard AWS variables on the cluster.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass, field

ENTRY_MODULE = "bluff_ray.cli"
EXCLUDES = [".venv", "viewer/node_modules", "bluff-results", ".git", "**/__pycache__", "*.egg-info"]


@dataclass
class JobRequest:
    """Everything ``JobSubmissionClient.submit_job`` gets; built and checked without a cluster."""

    entrypoint: str
    runtime_env: dict
    submission_id: str | None = None
    entrypoint_num_cpus: float | None = None
    metadata: dict = field(default_factory=dict)


def build_request(
    config: str,
    working_dir: str = ".",
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    pip: list[str] | None = None,
    submission_id: str | None = None,
    entrypoint_num_cpus: float | None = None,
) -> JobRequest:
    """The job for ``bluff run --config CONFIG [extra args]`` with ``working_dir`` shipped."""
    from .config import load

    wd = os.path.abspath(working_dir)
    cfg_path = os.path.abspath(config)
    if not os.path.isdir(wd):
        raise ValueError(f"working dir not found: {working_dir}")
    if os.path.commonpath([wd, cfg_path]) != wd:
        raise ValueError(f"the config file {config} must be inside the working dir {working_dir} to be shipped")
    load(cfg_path)  # fail here, not on the cluster, when the config is invalid
    rel = os.path.relpath(cfg_path, wd)
    for arg in extra_args or []:
        if arg.startswith("--storage-option"):
            raise ValueError("do not pass --storage-option to a submitted job (it would show in the job's command "
                             "line): use the cluster's IAM role or AWS environment instead")
    cmd = ["python", "-m", ENTRY_MODULE, "run", "--config", rel, *(extra_args or [])]
    runtime_env: dict = {"working_dir": wd, "excludes": list(EXCLUDES)}
    if env:
        runtime_env["env_vars"] = dict(env)
    if pip:
        runtime_env["pip"] = list(pip)
    return JobRequest(entrypoint=" ".join(shlex.quote(c) for c in cmd), runtime_env=runtime_env,
                      submission_id=submission_id, entrypoint_num_cpus=entrypoint_num_cpus,
                      metadata={"tool": "bluff_ray", "config": rel})


def submit(request: JobRequest, address: str, wait: bool = True, poll_s: float = 5.0) -> int:
    """Submit, then (if ``wait``) stream status until the job ends; returns a process exit code."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = client.submit_job(
        entrypoint=request.entrypoint,
        runtime_env=request.runtime_env,
        submission_id=request.submission_id,
        entrypoint_num_cpus=request.entrypoint_num_cpus,
        metadata=request.metadata,
    )
    print(f"submitted job {job_id} to {address}")
    if not wait:
        print(f"follow it with: ray job logs --address {address} --follow {job_id}")
        return 0
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    try:
        _follow(client, job_id)
    except Exception:  # log streaming needs the dashboard's websocket; fall back to polling
        while client.get_job_status(job_id) not in terminal:
            time.sleep(poll_s)
        print(client.get_job_logs(job_id), end="")
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def _follow(client, job_id: str) -> None:
    """Print the job's logs as they come, until it ends."""
    import asyncio

    async def go() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(go())


def _kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k, v


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "submit", help="submit a 'bluff run' to a Ray cluster as a Ray Job",
        description="Submit 'bluff run --config CONFIG' to a Ray cluster (Ray Jobs API). The working dir "
        "(default: current) is shipped as the job's code; the cluster image must provide bluff_ray's "
        "dependencies (deploy/Dockerfile). Options after '--' are passed to 'bluff run'.")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
                   help="Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or "
                   "$RAY_ADDRESS)")
    p.add_argument("--config", required=True, help="run configuration file (inside the working dir)")
    p.add_argument("--working-dir", default=".", help="code shipped to the cluster (default: .)")
    p.add_argument("--env", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="environment variable for the job (repeatable); not for secrets, which the Ray "
                   "dashboard shows")
    p.add_argument("--pip", action="append", default=[], metavar="REQ",
                   help="extra pip requirement installed in the job's runtime env (repeatable; prefer the image)")
    p.add_argument("--submission-id", default=None,
                   help="job id; Ray refuses a second job with the same id (an idempotency key)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None,
                   help="CPUs reserved for the driver process (default: none)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of following the logs")
    p.add_argument("--dry-run", action="store_true", help="print the job request and exit")
    p.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then extra 'bluff run' options")
    p.set_defaults(func=cmd_submit)


def cmd_submit(args: argparse.Namespace) -> int:
    extra = list(args.run_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    try:
        req = build_request(args.config, args.working_dir, extra, dict(args.env), args.pip, args.submission_id,
                            args.entrypoint_num_cpus)
    except ValueError as e:
        print(f"bluff submit: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"entrypoint: {req.entrypoint}")
        print(f"runtime_env: working_dir={req.runtime_env['working_dir']} excludes={req.runtime_env['excludes']}"
              + (f" env_vars={sorted(req.runtime_env.get('env_vars', {}))}" if req.runtime_env.get("env_vars") else ""))
        return 0
    if not args.address:
        print("bluff submit: error: no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS",
              file=sys.stderr)
        return 2
    return submit(req, args.address, wait=not args.no_wait)
