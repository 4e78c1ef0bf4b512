"""server/ray_app.py without a cluster: the Serve config validates, the builder checks its args and derives
Serve's limits from the engine's queue bound."""

from __future__ import annotations

import re

import pytest
import yaml

pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")

from ray.serve.schema import ServeDeploySchema  # noqa: E402

from server import ray_app  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.ray.cluster import SERVE_CONFIG  # noqa: E402

pytestmark = pytest.mark.ray


def test_serve_config_is_valid_and_points_at_the_builder() -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8")))
    assert config.http_options.port == 8000
    (app,) = config.applications
    assert app.import_path == "server.ray_app:build_app" and app.route_prefix == "/"
    Settings(**app.args)  # the args are danet-serve settings
    (deployment,) = app.deployments
    assert deployment.name == ray_app.DEPLOYMENT_NAME
    # the per-replica request limit comes from the engine's settings, not from the config file
    assert "max_ongoing_requests" not in deployment.model_fields_set
    assert "max_queued_requests" not in deployment.model_fields_set


def test_limits_follow_the_engine_queue_bound() -> None:
    options = ray_app.deployment_options(Settings(max_queue=7, retry_after_s=3))
    assert options["max_ongoing_requests"] == 7 and options["max_queued_requests"] == 7
    assert options["backpressure_config"].status_code == 503
    assert options["backpressure_config"].retry_after_s == 3


def test_builder_refuses_unknown_or_invalid_settings() -> None:
    with pytest.raises(ValueError, match="max_queu"):
        ray_app.build_app({"max_queu": 4})
    with pytest.raises(ValueError, match="max_queue"):
        ray_app.build_app({"max_queue": 0})
    app = ray_app.build_app({"max_queue": 5})
    assert type(app).__name__ == "Application"


def test_serve_config_registers_both_grpc_services() -> None:
    from server import ray_grpc

    config = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8")))
    assert tuple(config.grpc_options.grpc_servicer_functions) == ray_grpc.SERVICER_FUNCTIONS
    # one replica method per RPC of both services, named as the RPC (how the proxy finds it)
    for service in ray_grpc._SERVICES.values():
        for method in service.methods:
            assert callable(getattr(ray_app.DanetReplica, method.name)), method.name


def test_docs_commands_name_real_files() -> None:
    root = SERVE_CONFIG.parents[2]
    text = (root / "docs" / "ray.md").read_text(encoding="utf-8") + (root / "README.md").read_text(
        encoding="utf-8"
    )
    paths = re.findall(r"(?:serve run|serve deploy|kubectl apply -f) (deploy/\S+)", text)
    assert {"deploy/ray/serve.yaml", "deploy/kuberay/rayservice.yaml"} <= set(paths)
    for path in paths:
        assert (root / path).is_file(), path
