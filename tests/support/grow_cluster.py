"""A Ray cluster that gains its workers after the driver started (run by tests/test_cluster.py).

Starts a cluster whose head has no CPU (nothing can run), starts `bluff run` against it, adds a
node with 2 CPUs once the driver says it is waiting, and prints the driver's exit code and output
as JSON. Usage: grow_cluster.py OUT_DIR [extra bluff run options]
"""

import json
import subprocess
import sys
import threading
import time

from ray.cluster_utils import Cluster


def main() -> None:
    out, extra = sys.argv[1], sys.argv[2:]
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 100 * 2**20},
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bluff_ray.cli",
            "run",
            "--ray-address",
            cluster.address,
            "--out",
            out,
            "--classes",
            "0,1,2",
            "--target-chunk",
            "1",
            "--images-per-class",
            "6",
            "--attack-steps",
            "3",
            "--no-assets-enabled",
            "--no-progress",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    err_lines: list[str] = []
    waiting = threading.Event()

    def read_err():
        for line in proc.stderr:
            err_lines.append(line)
            if "waiting for workers" in line:
                waiting.set()

    t = threading.Thread(target=read_err, daemon=True)
    t.start()
    waited = waiting.wait(180)
    added_at = time.time()
    cluster.add_node(num_cpus=2, object_store_memory=100 * 2**20)
    stdout = proc.stdout.read()
    rc = proc.wait(600)
    t.join(10)
    cluster.shutdown()
    print(
        json.dumps(
            {"rc": rc, "waited": waited, "stdout": stdout, "stderr": "".join(err_lines)[-8000:], "added_at": added_at}
        )
    )


if __name__ == "__main__":
    main()
