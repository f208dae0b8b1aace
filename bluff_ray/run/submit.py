"""``bluff submit``: send a ``bluff run`` to a Ray cluster as a Ray Job.

The job ships the code (``working_dir``, honouring .gitignore/.rayignore) and runs
``python -m bluff_ray.cli run --config <file>`` on the head node; torch, ray and the other
dependencies come from the cluster image (deploy/Dockerfile), not from a runtime-env pip install
(slow and fragile at scale). The config file must lie inside the working dir so it travels with it.
Credentials never travel with the job, from any source: a config file (it is uploaded with the
working dir), ``bluff run`` options after ``--`` or ``--env`` values holding a storage secret
(``storage_options`` keys such as ``secret``, ``key``, ``token``, ``password``; user:password@ or a
signed query in a URL; secret-looking variable names) are refused, because the Ray dashboard shows
all of them. Give the workers an IAM role/instance profile, or set the standard AWS variables on
the cluster.

Authentication (Ray's token authentication, since Ray 2.52; on by default for local clusters since
2.59 and for all clusters from 2.61): Ray's ``JobSubmissionClient`` sends
``Authorization: Bearer <token>`` to the dashboard when ``RAY_AUTH_MODE=token`` is set in the
client's environment, with the token read, in this order, from ``RAY_AUTH_TOKEN``, the file named
by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``.
``bluff submit`` uses exactly that mechanism; ``--auth-token-path FILE`` sets ``RAY_AUTH_MODE=token``
and ``RAY_AUTH_TOKEN_PATH=FILE`` for this client process only. The token goes into that HTTP header
and nowhere else: never into the job's entrypoint, runtime env, metadata or any output (a job
request that would carry it is refused). The job's driver authenticates with the cluster's own
token (its nodes run with ``RAY_AUTH_MODE=token``). A missing or wrong token ends with one
paragraph saying what to do and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

ENTRY_MODULE = "bluff_ray.cli"
EXCLUDES = [".venv", "viewer/node_modules", "bluff-results", ".git", "**/__pycache__", "*.egg-info"]
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
DEFAULT_TOKEN_PATH = os.path.join("~", ".ray", "auth_token")
HOW_TO_AUTH = (
    "Give bluff submit the cluster's token: --auth-token-path FILE, or Ray's own variables "
    "RAY_AUTH_MODE=token with RAY_AUTH_TOKEN_PATH=FILE (or RAY_AUTH_TOKEN, or the file ~/.ray/auth_token). "
    '`ray get-auth-token` on the head node prints the cluster\'s token (deploy/README.md, "Authentication").'
)


# Words that make a storage option, URL query parameter or environment variable a secret.
SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "key", "signature", "session")
SECRET_ENV = re.compile(
    r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY|SESSION_KEY", re.IGNORECASE
)
NO_SECRETS = (
    "the Ray dashboard shows a job's files, command line and environment to anyone who can open it: give "
    "the cluster's nodes an IAM role/instance profile, or set the standard AWS variables on the cluster"
)


class SubmitError(RuntimeError):
    """The job could not be submitted (authentication, connection); the message says what to do."""


@dataclass
class JobRequest:
    """Everything ``JobSubmissionClient.submit_job`` gets; built and checked without a cluster."""

    entrypoint: str
    runtime_env: dict
    submission_id: str | None = None
    entrypoint_num_cpus: float | None = None
    metadata: dict = field(default_factory=dict)


def local_token() -> str | None:
    """The token Ray's client would send, found the way Ray finds it (RAY_AUTH_TOKEN, then the file
    named by RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token); None when there is none. Used only to make
    sure it never lands in a job request."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser(DEFAULT_TOKEN_PATH)
    try:
        with open(os.path.expanduser(path)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def local_token_path() -> str | None:
    """The token file Ray's client would read (RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), resolved, if
    it exists and RAY_AUTH_TOKEN does not take precedence; else None."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return None
    path = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH") or DEFAULT_TOKEN_PATH)
    return os.path.realpath(path) if os.path.isfile(path) else None


def _secret_keys(options: Mapping[str, Any], prefix: str = "storage_options") -> Iterator[str]:
    for k, v in options.items():
        name = f"{prefix}.{k}"
        if isinstance(v, Mapping):
            yield from _secret_keys(v, name)
        elif any(w in str(k).lower() for w in SECRET_WORDS):
            yield name


def secrets_in(cfg) -> list[str]:
    """Where a run configuration holds a secret: storage option keys (``storage_options.secret``, nested
    ``client_kwargs`` too) and URLs with user:password@ or a signed/token query (``data``)."""
    from urllib.parse import parse_qsl, urlsplit

    found = list(_secret_keys(cfg.storage_options))
    for name in ("out", "data", "weights", "model_cache", "node_cache"):
        url = getattr(cfg, name)
        if not url or "://" not in str(url):
            continue
        parts = urlsplit(str(url))
        query = [k for k, _ in parse_qsl(parts.query)]
        if "@" in parts.netloc or any(w in k.lower() for k in query for w in SECRET_WORDS):
            found.append(f"{name} (credentials in the URL)")
    return found


def _job_config(cfg_path: str, extra_args: list[str]):
    """The RunConfig the job's ``bluff run --config FILE [extra args]`` will see (the config options among
    the extra args; others are left to the cluster's ``bluff run``)."""
    from bluff_ray.run import options
    from bluff_ray.run.config import ConfigError

    parser = argparse.ArgumentParser(prog="bluff run", add_help=False, exit_on_error=False)
    parser.add_argument("--config")
    options.add_arguments(parser)
    options.add_set_argument(parser)
    try:
        args, _ = parser.parse_known_args(["--config", cfg_path, *extra_args])
    except argparse.ArgumentError as e:
        raise ConfigError(f"options after --: {e}") from None
    return options.from_args(args)


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
    wd = os.path.abspath(working_dir)
    cfg_path = os.path.abspath(config)
    if not os.path.isdir(wd):
        raise ValueError(f"working dir not found: {working_dir}")
    if os.path.commonpath([wd, cfg_path]) != wd:
        raise ValueError(f"the config file {config} must be inside the working dir {working_dir} to be shipped")
    for arg in extra_args or []:
        if arg.startswith("--storage-option"):
            raise ValueError(
                "do not pass --storage-option to a submitted job (it would show in the job's command "
                "line): use the cluster's IAM role or AWS environment instead"
            )
    job_cfg = _job_config(cfg_path, list(extra_args or []))  # fail here, not on the cluster, when invalid
    token_file = local_token_path()
    if token_file and os.path.commonpath([os.path.realpath(wd), token_file]) == os.path.realpath(wd):
        raise ValueError(
            f"the Ray auth token file {token_file} lies inside the working dir {working_dir}, which is "
            "uploaded with the job (and readable by anyone who can open the cluster's dashboard): "
            "keep it outside, e.g. in ~/.ray/"
        )
    rel = os.path.relpath(cfg_path, wd)
    for key in env or {}:
        if key.upper() in AUTH_ENV:
            raise ValueError(
                f"do not pass {key} to the job (--env values show in the Ray dashboard): the cluster's "
                "nodes hold its token and its drivers use it; the token for submitting goes in "
                "--auth-token-path or RAY_AUTH_TOKEN_PATH"
            )
        if SECRET_ENV.search(key):
            raise ValueError(f"do not pass the secret {key} with --env: {NO_SECRETS}")
    found = secrets_in(job_cfg)
    if found:
        raise ValueError(
            f"the job's run configuration ({config} and the options after --) holds secrets "
            f"({', '.join(found)}): {NO_SECRETS}"
        )
    cmd = ["python", "-m", ENTRY_MODULE, "run", "--config", rel, *(extra_args or [])]
    runtime_env: dict = {"working_dir": wd, "excludes": list(EXCLUDES)}
    if env:
        runtime_env["env_vars"] = dict(env)
    if pip:
        runtime_env["pip"] = list(pip)
    req = JobRequest(
        entrypoint=" ".join(shlex.quote(c) for c in cmd),
        runtime_env=runtime_env,
        submission_id=submission_id,
        entrypoint_num_cpus=entrypoint_num_cpus,
        metadata={"tool": "bluff_ray", "config": rel},
    )
    check_no_token(req)
    return req


def check_no_token(request: JobRequest, token: str | None = None) -> None:
    """Refuse a job request that carries the Ray auth token anywhere (entrypoint, runtime env,
    metadata, submission id): the dashboard shows all of them to anyone who can open it."""
    token = token if token is not None else local_token()
    if not token or len(token) < 8:
        return
    fields = [request.entrypoint, repr(request.runtime_env), repr(request.metadata), str(request.submission_id)]
    if any(token in f for f in fields):
        raise ValueError(
            "the Ray authentication token appears in the job request (its command line, environment "
            "or metadata), which the Ray dashboard shows: remove it; bluff submit sends the token only "
            "in the request's Authorization header"
        )


def use_token_file(path: str) -> str:
    """Point Ray's client at the token in ``path`` for this process only (``RAY_AUTH_MODE=token``,
    ``RAY_AUTH_TOKEN_PATH``); returns the absolute path. Raises SubmitError when it holds no token."""
    full = os.path.abspath(os.path.expanduser(path))
    _check_token_file(full, "--auth-token-path")
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = full
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
    _refresh_ray_auth()
    return full


def _check_token_file(path: str, what: str) -> None:
    try:
        with open(path) as f:
            ok = bool(f.read().strip())
    except OSError as e:
        raise SubmitError(f"{what} {path}: cannot read a token there ({e.strerror}). {HOW_TO_AUTH}") from None
    if not ok:
        raise SubmitError(f"{what} {path}: the file is empty, not a token. {HOW_TO_AUTH}")


def _refresh_ray_auth() -> None:
    """Ray caches the auth mode and the token when ``ray._raylet`` first loads; re-read them after the
    environment changed (what Ray's own test helpers do)."""
    if "ray._raylet" not in sys.modules:
        return
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:  # pragma: no cover - other Ray versions: the environment is read on first use
        pass


def _token_source() -> str:
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"the file {os.environ['RAY_AUTH_TOKEN_PATH']} (RAY_AUTH_TOKEN_PATH)"
    return f"the file {DEFAULT_TOKEN_PATH}"


def auth_error_message(address: str, error: Exception) -> str:
    """One paragraph: what the cluster said, why, and what to do (never the token itself)."""
    text = str(getattr(error, "message", None) or error)
    token_mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token"
    if text.startswith("Authentication failed"):  # HTTP 403: a token was sent, and it is not the cluster's
        why = (
            f"the Ray cluster at {address} refused the token read from {_token_source()}: "
            "it is not this cluster's token."
        )
    elif text.startswith("Authentication required"):  # HTTP 401: no token was sent
        if not token_mode:
            detail = "RAY_AUTH_MODE is not 'token' in this environment, so Ray's client sent none"
        else:
            detail = (
                "RAY_AUTH_MODE=token, but no token was found in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                f"{DEFAULT_TOKEN_PATH}"
            )
        why = f"the Ray cluster at {address} uses token authentication and no token was sent ({detail})."
    else:
        why = f"Ray could not authenticate to {address}: {text.split('. ')[0].strip()}."
    return f"bluff submit: {why} {HOW_TO_AUTH}"


def _preflight_auth() -> None:
    """In token mode, a token file that cannot be read, or no token at all: say so plainly, before Ray's
    client logs warnings and fails with a long message."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() != "token":
        return
    if not os.environ.get("RAY_AUTH_TOKEN", "").strip() and os.environ.get("RAY_AUTH_TOKEN_PATH"):
        _check_token_file(os.path.expanduser(os.environ["RAY_AUTH_TOKEN_PATH"]), "RAY_AUTH_TOKEN_PATH")
    if local_token() is None:
        raise SubmitError(
            f"bluff submit: RAY_AUTH_MODE=token, but no token was found in RAY_AUTH_TOKEN, "
            f"RAY_AUTH_TOKEN_PATH or {DEFAULT_TOKEN_PATH}. {HOW_TO_AUTH}"
        )


def submit(request: JobRequest, address: str, wait: bool = True, poll_s: float = 5.0) -> int:
    """Submit, then (if ``wait``) stream status until the job ends; returns a process exit code.

    Raises SubmitError (a message for people) when the cluster cannot be reached or refuses the
    client's authentication.
    """
    import requests
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    check_no_token(request)
    _preflight_auth()
    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(
            entrypoint=request.entrypoint,
            runtime_env=request.runtime_env,
            submission_id=request.submission_id,
            entrypoint_num_cpus=request.entrypoint_num_cpus,
            metadata=request.metadata,
        )
    except AuthenticationError as e:
        raise SubmitError(auth_error_message(address, e)) from None
    except (ConnectionError, requests.exceptions.ConnectionError):
        raise SubmitError(
            f"bluff submit: cannot reach the Ray dashboard at {address}: is the cluster up, and the dashboard port "
            "forwarded (`ray dashboard deploy/cluster.yaml`, or `kubectl port-forward`)?"
        ) from None
    print(f"submitted job {job_id} to {address}")
    if not wait:
        print(
            f"follow it with: ray job logs --address {address} --follow {job_id}  (with the same RAY_AUTH_* settings)"
        )
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
    """``--env KEY=VALUE`` with the one KEY=VALUE parser (values stay text: they are environment values)."""
    from bluff_ray.run.config import ConfigError, parse_assignment

    try:
        return parse_assignment(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "submit",
        help="submit a 'bluff run' to a Ray cluster as a Ray Job",
        description="Submit 'bluff run --config CONFIG' to a Ray cluster (Ray Jobs API). The working dir "
        "(default: current) is shipped as the job's code; the cluster image must provide bluff_ray's "
        "dependencies (deploy/Dockerfile). Options after '--' are passed to 'bluff run'. Clusters with token "
        "authentication (RAY_AUTH_MODE=token on the cluster): the client sends the token the Ray way, when "
        "RAY_AUTH_MODE=token, from RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; "
        "--auth-token-path sets both for this command. The token is never part of the job.",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
        help="Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)",
    )
    p.add_argument("--config", required=True, help="run configuration file (inside the working dir)")
    p.add_argument("--working-dir", default=".", help="code shipped to the cluster (default: .)")
    p.add_argument(
        "--auth-token-path",
        metavar="FILE",
        default=None,
        help="file holding the cluster's Ray auth token (`ray get-auth-token` on the head node prints "
        "it); sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=FILE for this client only (default: Ray's "
        "own variables and ~/.ray/auth_token)",
    )
    p.add_argument(
        "--env",
        action="append",
        type=_kv,
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the job (repeatable); not for secrets, which the Ray dashboard shows",
    )
    p.add_argument(
        "--pip",
        action="append",
        default=[],
        metavar="REQ",
        help="extra pip requirement installed in the job's runtime env (repeatable; prefer the image)",
    )
    p.add_argument(
        "--submission-id", default=None, help="job id; Ray refuses a second job with the same id (an idempotency key)"
    )
    p.add_argument(
        "--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver process (default: none)"
    )
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of following the logs")
    p.add_argument("--dry-run", action="store_true", help="print the job request and exit")
    p.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then extra 'bluff run' options")
    p.set_defaults(func=cmd_submit)


def cmd_submit(args: argparse.Namespace) -> int:
    extra = list(args.run_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    try:
        if args.auth_token_path:
            use_token_file(args.auth_token_path)
        req = build_request(
            args.config, args.working_dir, extra, dict(args.env), args.pip, args.submission_id, args.entrypoint_num_cpus
        )
    except ValueError as e:
        print(f"bluff submit: error: {e}", file=sys.stderr)
        return 2
    except SubmitError as e:
        print(_with_prefix(e), file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"entrypoint: {req.entrypoint}")
        print(
            f"runtime_env: working_dir={req.runtime_env['working_dir']} excludes={req.runtime_env['excludes']}"
            + (f" env_vars={sorted(req.runtime_env.get('env_vars', {}))}" if req.runtime_env.get("env_vars") else "")
        )
        return 0
    if not args.address:
        print(
            "bluff submit: error: no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS",
            file=sys.stderr,
        )
        return 2
    try:
        return submit(req, args.address, wait=not args.no_wait)
    except SubmitError as e:
        print(_with_prefix(e), file=sys.stderr)
        return 2


def _with_prefix(e: SubmitError) -> str:
    text = str(e)
    return text if text.startswith("bluff submit:") else f"bluff submit: {text}"
