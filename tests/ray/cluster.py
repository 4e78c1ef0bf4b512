"""A real multi-node Ray cluster on loopback for the Serve tests (imported only when ray is installed).

Head node (no replica resource: it runs the Serve controller and the one HTTP proxy) plus worker nodes,
each with its own ``num_cpus``, a small object store and one unit of ``REPLICA_RESOURCE``, so that every
replica needs a worker of its own and two replicas always sit on two different nodes. The third worker is
the spare that takes a replica when a worker node is killed. Applications are
deployed the way users deploy them: ``serve run --non-blocking CONFIG`` with a copy of
``deploy/ray/serve.yaml`` in which only the port, the proxy location, the model and the placement change.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve
from ray.cluster_utils import Cluster

from tests.static_checks import REPO_ROOT

SERVE_CONFIG = REPO_ROOT / "deploy" / "ray" / "serve.yaml"
APP = "danet"
DEPLOYMENT = "danet"
REPLICA_RESOURCE = "danet_replica"
MiB = 1024 * 1024
NODE = {"object_store_memory": 100 * MiB, "include_dashboard": False}
SERVE_CLI = Path(sys.executable).parent / "serve"


@dataclass
class ServeCluster:
    cluster: Cluster
    http_port: int
    grpc_port: int
    model: Path
    config_dir: Path
    deploys: int = field(default=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def worker_node_ids(self) -> set[str]:
        return {
            node["NodeID"]
            for node in ray.nodes()
            if node["Alive"] and node["Resources"].get(REPLICA_RESOURCE, 0) > 0
        }

    def config(self, args: dict[str, Any], deployment: dict[str, Any]) -> dict[str, Any]:
        """deploy/ray/serve.yaml with the test's port, proxy, model and placement."""
        config: dict[str, Any] = yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8"))
        # a proxy timeout below the clients' (REQUEST_TIMEOUT_S): a request lost with its replica ends as 408
        config["http_options"] = {"host": "127.0.0.1", "port": self.http_port, "request_timeout_s": 15}
        config["grpc_options"]["port"] = self.grpc_port
        config["proxy_location"] = "HeadOnly"  # every node shares 127.0.0.1: one proxy, on the head
        app = config["applications"][0]
        app["args"] = {
            **app.get("args", {}),
            "models": [str(self.model)],
            "providers": ["CPUExecutionProvider"],
            "warmup_sizes": ["32x32"],
            "log_format": "text",
            "infer_at_preferred_size": False,  # the tests compare with a full-size onnxruntime run
            **args,
        }
        spec = copy.deepcopy(app["deployments"][0])
        spec.pop("autoscaling_config", None)
        spec.update(deployment)
        spec["ray_actor_options"] = {"num_cpus": 1, "resources": {REPLICA_RESOURCE: 1}}
        app["deployments"] = [spec]
        return config

    def deploy(self, args: dict[str, Any], deployment: dict[str, Any], replicas: int) -> None:
        """``serve run --non-blocking`` the config, then wait for RUNNING with ``replicas`` replicas."""
        self.deploys += 1
        path = self.config_dir / f"serve-{self.deploys}.yaml"
        path.write_text(yaml.safe_dump(self.config(args, deployment)), encoding="utf-8")
        run = subprocess.run(
            [str(SERVE_CLI), "run", "--non-blocking", "--address", self.cluster.address, str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        wait_for(lambda: self.app_status() == "RUNNING" and self.running() == replicas, 150, "deployment")

    def app_status(self) -> str | None:
        app = serve.status().applications.get(APP)
        return None if app is None else _name(app.status)

    def replica_states(self) -> dict[str, int]:
        app = serve.status().applications.get(APP)
        if app is None or DEPLOYMENT not in app.deployments:
            return {}
        return {_name(k): v for k, v in app.deployments[DEPLOYMENT].replica_states.items()}

    def running(self) -> int:
        return self.replica_states().get("RUNNING", 0)

    def remove_worker(self, node_id_prefix: str) -> str:
        """Kill every process of the worker node whose id starts with ``node_id_prefix``, as a crash would."""
        (node,) = [n for n in self.cluster.worker_nodes if n.node_id.startswith(node_id_prefix)]
        self.cluster.remove_node(node, allow_graceful=False)
        return str(node.node_id)

    def kill_replica(self, unique_id: str) -> None:
        """Kill one replica actor outright (no graceful shutdown), as a crash would."""
        names = [
            actor["name"]
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith("SERVE_REPLICA::") and actor["name"].endswith(f"#{unique_id}")
        ]
        assert len(names) == 1, names
        ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)


def start_cluster(
    model: Path, http_port: int, grpc_port: int, config_dir: Path, workers: int = 3
) -> ServeCluster:
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": 1})
    try:
        for _ in range(workers):
            cluster.add_node(**NODE, num_cpus=1, resources={REPLICA_RESOURCE: 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="serve", logging_level="WARNING")
    except BaseException:
        cluster.shutdown()
        raise
    return ServeCluster(
        cluster=cluster, http_port=http_port, grpc_port=grpc_port, model=model, config_dir=config_dir
    )


def stop_cluster(serve_cluster: ServeCluster) -> None:
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        serve_cluster.cluster.shutdown()


def _name(state: Any) -> str:
    """Serve's status enums are str enums; older Ray versions returned plain strings."""
    return str(getattr(state, "value", state))


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every_s)
    raise AssertionError(f"{what} not reached within {timeout_s:.0f} s")
