"""deploy/: the YAMLs parse, point at the real entry point with valid options, and their run configs
only use RunConfig keys; ``bluff submit`` builds a correct job request."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from bluff_ray import cli, config, submit

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


def test_imagenet_config_uses_only_runconfig_keys():
    cfg = config.load(str(DEPLOY / "imagenet.toml"))  # unknown keys raise ConfigError
    assert cfg.model == "googlenet" and cfg.out.startswith("s3://") and cfg.attack.bf16


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
    assert head["rayStartParams"]["num-cpus"] == "0"
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    ray_version = job["spec"]["rayClusterSpec"]["rayVersion"]
    docker = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray_version}" in docker
    assert "secret" not in (DEPLOY / "rayjob.yaml").read_text().lower()


def test_cluster_launcher_yaml():
    c = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    types = c["available_node_types"]
    assert types[c["head_node_type"]]["resources"]["CPU"] == 0
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] >= 1 for t in gpu_types)
    assert any("--num-cpus=0" in cmd for cmd in c["head_start_ray_commands"])
    assert any("bluff_ray.cli" in cmd for cmd in c["setup_commands"])
    assert c["provider"]["type"] == "aws"


def test_dockerfile_installs_the_package_and_checks_the_entry_point():
    docker = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py3\d+-gpu", docker, re.M)
    assert "pip install --no-cache-dir ." in docker and "import bluff_ray.cli" in docker


def test_documented_ray_job_submit_line_runs_a_valid_bluff_command():
    text = (DEPLOY / "README.md").read_text()
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
    proc = subprocess.run([sys.executable, "-m", "bluff_ray.cli", "submit", "--config", "deploy/imagenet.toml",
                           "--dry-run", "--", "--classes", "0,1"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "entrypoint: python -m bluff_ray.cli run --config deploy/imagenet.toml --classes 0,1" in proc.stdout
