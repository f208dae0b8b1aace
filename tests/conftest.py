"""Shared fixtures: one local Ray instance, a moto S3 server on 127.0.0.1, and a real results root.

Fixture names other test modules rely on:
- ``digits``       (session): the demo digits adapter (``load_model("digits")``); every test runs
  with one torch thread (an autouse session fixture).
- ``ray_session``  (session): ``ray.init(num_cpus=2, ...)`` once; yields the ``ray`` module.
- ``s3_endpoint``  (session): a moto S3 server; yields its endpoint URL ("http://127.0.0.1:PORT").
- ``make_bucket``  (function): ``make_bucket(name, public=False, cors=False) -> name`` on that server.
- ``s3_options``   (function): s3fs storage_options for the moto endpoint.
- ``demo_results`` (session): a local results root written by the real pipeline
  (digits classes 0,1,2: 6 ordered pairs, default strengths, assets enabled; 24 images per class,
  10 PGD steps: see ``demo_config``); yields its path.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

# The instrumented filesystem ``countfs://`` (tests/support/countfs.py): registered here, and in
# every Ray worker through PYTHONPATH + sitecustomize (workers inherit this environment).
SUPPORT = Path(__file__).resolve().parent / "support"
sys.path.insert(0, str(SUPPORT))
os.environ["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), *filter(None, [os.environ.get("PYTHONPATH")])])
import countfs  # noqa: E402

countfs.register()

# Fake credentials for moto, set before anything (Ray workers, s3fs) reads them; never real ones.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "bluff-test-key-id",
    "AWS_SECRET_ACCESS_KEY": "bluff-test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "BOTO_CONFIG": "/dev/null",
}
for _k, _v in FAKE_AWS.items():
    os.environ[_k] = _v
for _k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_k, None)
# Local tests need no Ray token auth (Ray >= 2.5x enables it by default and writes a token file).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# The demo results' run configuration (digits, 3 classes -> 6 ordered pairs).
DEMO_CLASSES = [0, 1, 2]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread for the whole session: the engine's tensors here are tiny (8x8 digits),
    and on a 2-core CI box extra threads only contend with each other and with Ray (10-40x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits():
    """The demo digits adapter from the default checkpoint cache (trained on first use)."""
    from bluff_ray.engine.models import load_model

    return load_model("digits")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session (start/stop costs ~5 s each)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # our own instance, even if another Ray runs on this machine
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=200 * 2**20,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server bound to 127.0.0.1 (as s3fs's own tests do); yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_options(s3_endpoint):
    """storage_options for s3fs against the moto endpoint (credentials come from the env)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return {"endpoint_url": s3_endpoint}


@pytest.fixture
def make_bucket(s3_endpoint):
    """``make_bucket(name, public=False, cors=False)`` creates a bucket on the moto server.

    public: a bucket policy allowing anonymous GetObject; cors: the GET/HEAD + Range rule a browser
    needs. Bucket names need >= 3 characters.
    """
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")

    def make(name: str, public: bool = False, cors: bool = False) -> str:
        client.create_bucket(Bucket=name)
        if public:
            import json

            policy = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": "s3:GetObject",
                        "Resource": f"arn:aws:s3:::{name}/*",
                    }
                ],
            }
            client.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
        if cors:
            client.put_bucket_cors(
                Bucket=name,
                CORSConfiguration={
                    "CORSRules": [
                        {
                            "AllowedMethods": ["GET", "HEAD"],
                            "AllowedOrigins": ["*"],
                            "AllowedHeaders": ["*"],
                            "ExposeHeaders": ["Content-Range", "Content-Length", "ETag"],
                        }
                    ]
                },
            )
        return name

    return make


def demo_config(out: str, **overrides):
    """The run configuration of ``demo_results`` (tests reuse it to compare against).

    Digits classes 0,1,2, the model's default 10 strengths, assets on. Kept cheap for a 2-core CI
    box: 24 images per class, 10 PGD steps, 64 feature-vis steps (the science is unchanged; only
    the effort is smaller than ``bluff demo``'s).
    """
    import dataclasses

    from bluff_ray.run.config import RunConfig

    base = RunConfig()
    values = dict(
        model="digits",
        data="digits",
        out=out,
        classes=list(DEMO_CLASSES),
        progress=False,
        images_per_class=24,
        attack_batch_size=2048,  # pinned: test_pipeline recomputes a unit with it
        attack=dataclasses.replace(base.attack, steps=10),
        assets=dataclasses.replace(base.assets, fv_steps=64),
    )
    values.update(overrides)
    return RunConfig(**values)


@pytest.fixture(scope="session")
def demo_results(ray_session, tmp_path_factory):
    """A results root written by the real pipeline: digits classes 0,1,2 (6 ordered pairs), default
    strengths, assets enabled; returns its local path (str)."""
    from bluff_ray.run.driver import run

    out = str(tmp_path_factory.mktemp("demo-results") / "root")
    summary = run(demo_config(out))
    assert not summary.failed, summary.failed
    return out


@pytest.fixture(scope="module")
def fixture_unit():
    """The checked-in v1 unit (tests/fixtures/v1_unit): its metadata, the digits net in float64 and
    the original's and targets' class data (test_engine, test_fast_step)."""
    import json

    from bluff_ray.engine.compute import benign_stats, class_data
    from bluff_ray.engine.models.digits import DigitsNet, digits_adapter
    from bluff_ray.run.data import DigitsSource

    fixture = Path(__file__).parent / "fixtures" / "v1_unit"
    meta = json.loads((fixture / "unit.json").read_text())
    net = DigitsNet.empty()
    net.load_state_dict(torch.load(fixture / "digits_weights.pt", weights_only=True))
    adapter = digits_adapter(net.double().eval())
    src = DigitsSource()

    def data(c):
        x = src.class_images(c, meta["images_per_class"])[0].double()
        return class_data(adapter, c, x, benign_stats(adapter, x, c))

    return meta, adapter, data(meta["original"]), [data(t) for t in meta["targets"]]
