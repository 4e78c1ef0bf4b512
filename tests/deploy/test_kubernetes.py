"""deploy/k8s: both overlays render, validate strictly, and point at the real ports, endpoints and settings."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from common.contract import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT
from server.settings import Settings
from tests import static_checks as sc

OVERLAYS = tuple(sc.K8S_OVERLAYS)
EXPECTED_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


def _container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay: str, k8s_objects: dict[str, dict[str, dict[str, Any]]]) -> None:
    objects = k8s_objects[overlay]
    assert set(objects) == EXPECTED_KINDS
    assert sc.kubernetes_errors(list(objects.values())) == []


def test_validation_rejects_unknown_fields_and_wrong_types(
    k8s_objects: dict[str, dict[str, dict[str, Any]]],
) -> None:
    # kubernetes-validate reports the first violation of each object, so one mistake per copy.
    misspelt = copy.deepcopy(k8s_objects["cpu"]["Deployment"])
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    assert "httpGett" in " ".join(sc.kubernetes_errors([misspelt]))
    mistyped = copy.deepcopy(k8s_objects["cpu"]["Deployment"])
    mistyped["spec"]["replicas"] = "two"
    assert "'two'" in " ".join(sc.kubernetes_errors([mistyped]))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_hit_the_real_endpoints(
    overlay: str, k8s_objects: dict[str, dict[str, dict[str, Any]]], probe_client
) -> None:
    container = _container(k8s_objects[overlay])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": DEFAULT_HTTP_PORT, "grpc": DEFAULT_GRPC_PORT}
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        action = container[probe]["httpGet"]
        assert ports[action["port"]] == DEFAULT_HTTP_PORT
        paths[probe] = action["path"]
    assert paths == {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    # The probes carry no credentials: they must answer with an API key configured, before warm-up too.
    assert probe_client.get("/healthz").status_code == 200
    assert probe_client.get("/readyz").status_code == 503
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # room for load + warm-up


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_names_are_settings_and_agree_with_ports(
    overlay: str,
    k8s_objects: dict[str, dict[str, dict[str, Any]]],
    setting_env_names: set[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    container = _container(k8s_objects[overlay])
    names = {item["name"] for item in container["env"]}
    assert names <= setting_env_names, f"not settings: {sorted(names - setting_env_names)}"
    env = _env(container)
    for key in setting_env_names:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        if key != "DANET_API_KEY":  # from a Secret
            monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match="require_api_key"):
        Settings()  # the manifest refuses to run without the Secret's key
    monkeypatch.setenv("DANET_API_KEY", "from-the-secret")
    settings = Settings()
    assert settings.require_api_key and settings.metrics_public
    assert (settings.http_port, settings.grpc_port) == (DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(settings.trt_cache_dir) in mounts and "/tmp" in mounts  # writable under a read-only root


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_key_secret_is_required(
    overlay: str, k8s_objects: dict[str, dict[str, dict[str, Any]]]
) -> None:
    container = _container(k8s_objects[overlay])
    [key] = [item for item in container["env"] if item["name"] == "DANET_API_KEY"]
    reference = key["valueFrom"]["secretKeyRef"]
    assert reference["name"] == "danet-serve" and reference["key"] == "api-key"
    assert (
        reference.get("optional", False) is False
    )  # a missing Secret stops the pod instead of disabling auth
    template = k8s_objects[overlay]["Deployment"]["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert _env(container)["DANET_METRICS_PUBLIC"] == "true"  # the annotated scrape sends no key


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_outlasts_the_drain(
    overlay: str, k8s_objects: dict[str, dict[str, dict[str, Any]]]
) -> None:
    pod = k8s_objects[overlay]["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    drain = float(_env(container)["DANET_SHUTDOWN_GRACE_S"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runs_as_the_image_user_without_privileges(
    overlay: str, k8s_objects: dict[str, dict[str, dict[str, Any]]], dockerfile_stages: dict[str, sc.Stage]
) -> None:
    pod = k8s_objects[overlay]["Deployment"]["spec"]["template"]["spec"]
    image_user = dockerfile_stages[overlay].last("USER")
    assert image_user is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == image_user.args.split(":")[0]
    security = pod["containers"][0]["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_and_hpa_target_the_deployment(
    overlay: str, k8s_objects: dict[str, dict[str, dict[str, Any]]]
) -> None:
    objects = k8s_objects[overlay]
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = objects["Service"]["spec"]
    assert service["selector"].items() <= pod_labels.items()
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["ports"]} == {
        ("http", DEFAULT_HTTP_PORT, "http"),
        ("grpc", DEFAULT_GRPC_PORT, "grpc"),
    }
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    target = objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert (
        1
        <= objects["HorizontalPodAutoscaler"]["spec"]["minReplicas"]
        <= objects["HorizontalPodAutoscaler"]["spec"]["maxReplicas"]
    )


def test_gpu_overlay_requests_one_gpu_and_uses_the_gpu_image(
    k8s_objects: dict[str, dict[str, dict[str, Any]]],
) -> None:
    cpu, gpu = _container(k8s_objects["cpu"]), _container(k8s_objects["gpu"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert cpu["image"].endswith(":cpu") and gpu["image"].endswith(":gpu")
    assert _env(gpu)["DANET_REQUIRE_GPU"] == "true"
    tolerations = k8s_objects["gpu"]["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
