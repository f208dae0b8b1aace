"""deploy/: the YAMLs parse, point at the real entry point with valid options, and their run configs
only use RunConfig keys; ``bluff submit`` builds a correct job request; deploy/README.md says what
the files do (token authentication, the torch/CUDA pin, GPU workers from zero nodes, the attack
batch table)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from bluff_ray import cli
from bluff_ray.run import config, submit

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def parse_bluff_command(command: str):
    """Parse ``bluff run ...`` / ``python -m bluff_ray.cli run ...`` with the real CLI parser."""
    argv = shlex.split(command)
    if argv[:3] == ["python", "-m", "bluff_ray.cli"]:
        argv = argv[3:]
    elif argv[0] == "bluff":
        argv = argv[1:]
    else:
        raise AssertionError(f"not a bluff command: {command}")
    assert argv[0] == "run"
    return cli.build_parser().parse_args(argv)


def test_console_script_is_the_cli_main():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["bluff"] == "bluff_ray.cli:main"


README = (DEPLOY / "README.md").read_text()


def test_imagenet_config_uses_only_runconfig_keys():
    cfg = config.load(str(DEPLOY / "imagenet.toml"))  # unknown keys raise ConfigError
    assert cfg.model == "googlenet" and cfg.out.startswith("s3://") and cfg.attack.bf16
    # no pinned attack batch (1000 does not fit an A10G): chosen per GPU from its free memory
    assert "attack_batch_size" not in tomllib.loads((DEPLOY / "imagenet.toml").read_text())
    assert cfg.attack_batch_size is None
    assert cfg.num_workers is None  # every GPU the autoscaler can provide


def test_rayjob_manifest():
    docs = list(yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text()))
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    job = next(d for d in docs if d["kind"] == "RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    args = parse_bluff_command(job["spec"]["entrypoint"])
    # The --config path is where the ConfigMap key is mounted in the head pod.
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    mount = head["template"]["spec"]["containers"][0]["volumeMounts"][0]
    volume = next(v for v in head["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    key = Path(args.config).name
    assert Path(args.config).parent == Path(mount["mountPath"]) and key in cm["data"]
    run_toml = DEPLOY / "_check_run.toml"
    try:
        run_toml.write_text(cm["data"][key])
        cfg = config.load(str(run_toml))
    finally:
        run_toml.unlink()
    assert cfg.model == "googlenet"
    assert "attack_batch_size" not in tomllib.loads(cm["data"][key]) and cfg.attack_batch_size is None
    assert head["rayStartParams"]["num-cpus"] == "0"
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    # no autoscaler here: the run waits for exactly the GPU pods the group starts
    assert "enableInTreeAutoscaling" not in job["spec"]["rayClusterSpec"]
    assert cfg.num_workers == sum(
        w["replicas"] * w["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] for w in workers
    )
    # token authentication, by the operator (it creates the token Secret and the env of every container)
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    containers = [c for g in [head, *workers] for c in g["template"]["spec"]["containers"]]
    assert not any(e.get("name", "").startswith("RAY_AUTH") for c in containers for e in c.get("env", []))
    assert not re.search(r"[0-9a-f]{32,}", (DEPLOY / "rayjob.yaml").read_text())  # no token in the file
    ray_version = job["spec"]["rayClusterSpec"]["rayVersion"]
    docker = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray_version}" in docker
    assert "secret" not in (DEPLOY / "rayjob.yaml").read_text().lower()


def test_cluster_launcher_yaml():
    text = (DEPLOY / "cluster.yaml").read_text()
    c = yaml.safe_load(text)
    types = c["available_node_types"]
    assert types[c["head_node_type"]]["resources"]["CPU"] == 0
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] >= 1 for t in gpu_types)
    # GPU nodes start on demand: the run asks the autoscaler for them, and they can all start
    assert all(t["min_workers"] == 0 for t in gpu_types)
    assert sum(t["max_workers"] for n, t in types.items() if n != c["head_node_type"]) <= c["max_workers"]
    assert any("--num-cpus=0" in cmd for cmd in c["head_start_ray_commands"])
    assert any("bluff_ray.cli" in cmd for cmd in c["setup_commands"])
    assert c["provider"]["type"] == "aws"
    # token authentication on every node: the mode in every container, the token file copied in
    assert "--env RAY_AUTH_MODE=token" in c["docker"]["run_options"]
    assert c["file_mounts"] == {"/home/ray/.ray/auth_token": "~/.ray/auth_token"}
    assert not re.search(r"[0-9a-f]{32,}", text)  # no token in the file
    # the GPUs the README says the run asks for by default are the ones this file allows
    most = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_types)
    assert f"= {most} GPUs" in README and "min_workers: 0" in README


def test_readme_documents_token_authentication():
    for needle in (
        "RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN_PATH",
        "RAY_AUTH_TOKEN",
        "~/.ray/auth_token",
        "ray get-auth-token --generate",
        "ray get-auth-token",
        "--auth-token-path",
        "Authorization: Bearer",
        "exit code 2",
        "authOptions",
    ):
        assert needle in README, needle
    # the option the README tells people to use exists, and sets what the README says
    help_text = subprocess.run(
        [sys.executable, "-m", "bluff_ray.cli", "submit", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert "--auth-token-path" in help_text and "RAY_AUTH_TOKEN_PATH" in help_text


def _bluff_submit_lines(text: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r"bluff submit [^\n`]*", text)]


def test_documented_bluff_submit_commands_parse():
    lines = _bluff_submit_lines(README) + _bluff_submit_lines((DEPLOY / "cluster.yaml").read_text())
    assert any("--auth-token-path" in line for line in lines)
    parser = cli.build_parser()
    for line in lines:
        argv = shlex.split(line)[1:]
        if "--config" not in argv:
            continue
        args = parser.parse_args(argv)
        assert args.func.__name__ == "cmd_submit" and (REPO / args.config).is_file(), line


def test_readme_says_the_driver_is_bluff_run_and_waits_for_its_workers():
    assert "The job's entrypoint is `bluff run`" in README
    for needle in ("num_workers", "worker_timeout_s", "autoscaler", "min_workers: 0"):
        assert needle in README, needle


def test_dockerfile_installs_the_package_and_checks_the_entry_point():
    docker = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py3\d+-gpu", docker, re.MULTILINE)
    assert "pip install --no-cache-dir ." in docker and "import bluff_ray.cli" in docker


def test_dockerfile_pins_a_cuda12_torch_from_the_pytorch_index():
    """The -gpu Ray image is CUDA 12.1: torch must be a CUDA 12 build from PyTorch's index, pinned, never the
    PyPI default (CUDA 13.0 for torch 2.14.1, driver 580+)."""
    docker = (DEPLOY / "Dockerfile").read_text()
    index = re.search(r"^ARG TORCH_INDEX_URL=(https://download\.pytorch\.org/whl/cu(\d+))$", docker, re.MULTILINE)
    assert index and index.group(2).startswith("12"), "torch must come from a CUDA 12 index"
    install = next(line for line in docker.splitlines() if "torch==" in line and "pip install" in line)
    assert "--index-url ${TORCH_INDEX_URL}" in install
    torch_v = re.search(r'"torch==(\d+\.\d+\.\d+)"', install).group(1)
    vision_v = re.search(r'"torchvision==(\d+\.\d+\.\d+)"', install).group(1)
    assert "startswith('12.')" in docker  # the build stops if torch is not a CUDA 12 build
    # pip installs bluff_ray after torch, and must not swap it: checked again after `pip install .`
    assert docker.index("torch==") < docker.index("pip install --no-cache-dir .") < docker.rindex("startswith('12.')")
    # the README states the same pin, the same index and the driver it needs
    assert f"--index-url {index.group(1)} torch=={torch_v} torchvision=={vision_v}" in README
    assert re.search(r"driver[^.]*525", README) and "580" in README
    assert "cu121" in README  # the image's CUDA


FOOTPRINT_MB = {"bf16": 26.6, "fp32": 35.3}


def test_readme_attack_batch_table_follows_its_rule():
    """Every batch in the table is floor(0.85 x (memory - 1.5 GiB) / footprint) rounded down to 64, and the
    instances are the ones deployments use."""
    for mb in FOOTPRINT_MB.values():
        assert f"{mb} MB" in README
    assert "floor(0.85 x (GPU memory - 1.5 GiB) / footprint)" in README
    rows = re.findall(r"^\| (\w+) \| ([^|]+?) \| (\d+) \| (\d+) \| (\d+) \|$", README, re.MULTILINE)
    assert {r[0] for r in rows} == {"g5", "g6", "p4d", "p4de", "p5", "p5e"}
    gpus = {r[0]: r[1] for r in rows}
    assert gpus["g5"].startswith("A10G") and gpus["g6"].startswith("L4") and gpus["p5e"].startswith("H200")
    for name, _gpu, mib, bf16, fp32 in rows:
        usable = 0.85 * (int(mib) * 2**20 - 1.5 * 2**30)
        for kind, batch in (("bf16", int(bf16)), ("fp32", int(fp32))):
            per = FOOTPRINT_MB[kind] * 1e6
            assert batch % 64 == 0 and batch * per <= usable < (batch + 64) * per, (name, kind, batch)
    a10g = next(r for r in rows if r[0] == "g5")
    assert int(a10g[3]) < 1000 and 1000 * FOOTPRINT_MB["bf16"] * 1e6 > int(a10g[2]) * 2**20


def test_documented_ray_job_submit_line_runs_a_valid_bluff_command():
    text = README
    lines = [l for l in text.splitlines() if l.startswith("ray job submit")]
    assert lines
    for line in lines:
        argv = shlex.split(line)
        assert "--working-dir" in argv
        entry = " ".join(shlex.quote(a) for a in argv[argv.index("--") + 1 :])
        args = parse_bluff_command(entry)
        assert (REPO / args.config).is_file()


def test_build_request(tmp_path):
    req = submit.build_request(str(DEPLOY / "imagenet.toml"), str(REPO), ["--classes", "0,1"], {"A": "1"})
    args = parse_bluff_command(req.entrypoint)
    assert args.config == "deploy/imagenet.toml" and args.classes == "0,1"
    assert req.runtime_env["working_dir"] == str(REPO) and req.runtime_env["env_vars"] == {"A": "1"}
    assert ".venv" in req.runtime_env["excludes"]
    outside = tmp_path / "c.toml"
    outside.write_text('model = "digits"\n')
    with pytest.raises(ValueError, match="inside the working dir"):
        submit.build_request(str(outside), str(REPO))
    with pytest.raises(ValueError, match="storage-option"):
        submit.build_request(str(DEPLOY / "imagenet.toml"), str(REPO), ["--storage-option", "secret=x"])
    bad = tmp_path / "bad.toml"
    bad.write_text("modle = 'digits'\n")
    with pytest.raises(config.ConfigError, match="did you mean model"):
        submit.build_request(str(bad), str(tmp_path))


def test_submit_dry_run_cli():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bluff_ray.cli",
            "submit",
            "--config",
            "deploy/imagenet.toml",
            "--dry-run",
            "--",
            "--classes",
            "0,1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "entrypoint: python -m bluff_ray.cli run --config deploy/imagenet.toml --classes 0,1" in proc.stdout


@pytest.mark.parametrize(
    "where, text, extra, env, found",
    [
        (
            "run.toml",
            'model = "digits"\n[storage_options]\nsecret = "wJalrXUtnFEMI"\n',
            [],
            {},
            "storage_options.secret",
        ),
        ("run.toml", 'model = "digits"\n[storage_options]\nkey = "AKIAEXAMPLE"\n', [], {}, "storage_options.key"),
        (
            "run.yaml",
            "storage_options:\n  client_kwargs: {aws_secret_access_key: x}\n",
            [],
            {},
            "storage_options.client_kwargs.aws_secret_access_key",
        ),
        ("run.yaml", "storage_options: {token: abc, password: p}\n", [], {}, "storage_options.token"),
        ("run.toml", 'out = "s3://AKIA:secret@bucket/results"\n', [], {}, "out (credentials in the URL)"),
        ("run.toml", 'data = "https://host/val?X-Amz-Signature=abc"\n', [], {}, "data (credentials in the URL)"),
        ("run.toml", 'model = "digits"\n', ["--set", "storage_options.password=p"], {}, "storage_options.password"),
        ("run.toml", 'model = "digits"\n', ["--weights", "s3://u:p@b/w.pth"], {}, "weights (credentials in the URL)"),
        ("run.toml", 'model = "digits"\n', [], {"AWS_SECRET_ACCESS_KEY": "x"}, "AWS_SECRET_ACCESS_KEY"),
        ("run.toml", 'model = "digits"\n', [], {"AWS_SESSION_TOKEN": "x"}, "AWS_SESSION_TOKEN"),
    ],
)
def test_submit_refuses_secrets_from_any_source(tmp_path, where, text, extra, env, found):
    """A config file travels with the job and its command line and environment show in the Ray dashboard:
    a secret from any of them is refused before anything is sent, naming where it is."""
    conf = tmp_path / where
    conf.write_text(text)
    with pytest.raises(ValueError, match=re.escape(found)) as e:
        submit.build_request(str(conf), str(tmp_path), extra, env)
    assert "IAM role" in str(e.value)
    # the same without the secret goes through
    clean = tmp_path / f"clean{conf.suffix}"
    clean.write_text(
        "storage_options: {endpoint_url: 'http://127.0.0.1:9000', anon: false}\n"
        if where.endswith("yaml")
        else '[storage_options]\nendpoint_url = "http://127.0.0.1:9000"\n'
    )
    req = submit.build_request(str(clean), str(tmp_path), ["--set", "storage_options.anon=true"], {"LOG_LEVEL": "1"})
    assert req.runtime_env["env_vars"] == {"LOG_LEVEL": "1"}


def test_submit_cli_refuses_a_config_secret_in_one_line(tmp_path):
    conf = tmp_path / "run.toml"
    conf.write_text('[storage_options]\nsecret = "wJalrXUtnFEMI-do-not-ship"\n')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bluff_ray.cli",
            "submit",
            "--config",
            str(conf),
            "--working-dir",
            str(tmp_path),
            "--dry-run",
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "storage_options.secret" in proc.stderr, proc.stderr
    assert "wJalrXUtnFEMI" not in proc.stderr  # the value itself is never printed
    # invalid run options after -- are refused here too, naming the key, not on the cluster
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bluff_ray.cli",
            "submit",
            "--config",
            "deploy/imagenet.toml",
            "--dry-run",
            "--",
            "--attack-steps",
            "1000000000000",
        ],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "attack.steps" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_imagenet_target_chunk_comment_names_the_footer_limit():
    from bluff_ray.results import layout

    text = (DEPLOY / "imagenet.toml").read_text()
    assert "2 GiB" not in text and "16 KiB" in text and "bluff run --help" in text
    assert config.load(str(DEPLOY / "imagenet.toml")).target_chunk is None
    help_text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    assert f"16 KiB read, {layout.max_targets_per_file(10)} at 10 strengths" in help_text
