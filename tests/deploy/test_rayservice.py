"""deploy/kuberay/rayservice.yaml: the RayService fields validate strictly, its pod templates validate as
core Kubernetes objects, and its serveConfigV2 is a valid Serve config for the same application as
deploy/ray/serve.yaml, with one GPU per replica and room for max_replicas on the worker group."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
import yaml

from server.settings import Settings
from tests import static_checks as sc

RAYSERVICE = sc.DEPLOY_DIR / "kuberay" / "rayservice.yaml"
SERVE_CONFIG = sc.DEPLOY_DIR / "ray" / "serve.yaml"

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TEMPLATE = {"type": "object"}  # a core PodTemplateSpec: validated with kubernetes-validate below
# The RayService (ray.io/v1) fields this manifest can use: names, types and required keys as in the KubeRay
# CRD's v1 schema (rayservices.ray.io). Written out here rather than vendored; strict_openapi() then rejects
# any other key, as `kubectl apply --validate=strict` would.
_GROUP = {
    "rayStartParams": _STRING_MAP,
    "template": _TEMPLATE,
    "labels": _STRING_MAP,
    "resources": _STRING_MAP,
}
RAYSERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"], "additionalProperties": True},
        "spec": {
            "type": "object",
            "required": ["rayClusterConfig"],
            "properties": {
                "serveConfigV2": {"type": "string"},
                "excludeHeadPodFromServeSvc": {"type": "boolean"},
                "upgradeStrategy": {"type": "object", "additionalProperties": True},
                "serveService": {"type": "object", "additionalProperties": True},
                "rayClusterConfig": {
                    "type": "object",
                    "required": ["headGroupSpec"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "autoscalerOptions": {"type": "object", "additionalProperties": True},
                        "headGroupSpec": {
                            "type": "object",
                            "required": ["template"],
                            "properties": {**_GROUP, "serviceType": {"type": "string"}},
                        },
                        "workerGroupSpecs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["groupName", "maxReplicas", "minReplicas", "template"],
                                "properties": {
                                    **_GROUP,
                                    "groupName": {"type": "string"},
                                    "replicas": {"type": "integer"},
                                    "minReplicas": {"type": "integer"},
                                    "maxReplicas": {"type": "integer"},
                                    "idleTimeoutSeconds": {"type": "integer"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


@pytest.fixture(scope="module")
def rayservice() -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(RAYSERVICE.read_text(encoding="utf-8"))
    return manifest


def rayservice_errors(manifest: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(sc.strict_openapi(RAYSERVICE_SCHEMA))
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(manifest)]


def pod_templates(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}
    return {name: group["template"] for name, group in groups.items()}


def test_rayservice_validates_strictly(rayservice: dict[str, Any]) -> None:
    assert rayservice_errors(rayservice) == []
    misspelt = copy.deepcopy(rayservice)
    misspelt["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 4
    assert any("maxReplica" in error for error in rayservice_errors(misspelt))
    mistyped = copy.deepcopy(rayservice)
    mistyped["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert rayservice_errors(mistyped) != []  # rayStartParams values are strings


def test_pod_templates_validate_as_kubernetes_objects(rayservice: dict[str, Any]) -> None:
    objects = [
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}
        for name, template in pod_templates(rayservice).items()
    ]
    assert sc.kubernetes_errors(objects) == []
    broken = copy.deepcopy(objects[0])
    broken["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert "imagePullPolicyy" in " ".join(sc.kubernetes_errors([broken]))


def test_serve_config_is_the_same_application_with_one_gpu_per_replica(rayservice: dict[str, Any]) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")
    from ray.serve.schema import ServeDeploySchema

    serve = ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    local = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_CONFIG.read_text(encoding="utf-8")))
    (app,), (local_app,) = serve.applications, local.applications
    assert (app.name, app.import_path, app.route_prefix) == (
        local_app.name,
        local_app.import_path,
        local_app.route_prefix,
    )
    assert Settings(**app.args).require_gpu
    (deployment,) = app.deployments
    assert deployment.name == local_app.deployments[0].name
    assert deployment.ray_actor_options.num_gpus == 1
    assert serve.http_options.port == 8000

    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__  # the image's Ray = the pinned extra
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replica on the head
    (workers,) = cluster["workerGroupSpecs"]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert (
        int(limits["nvidia.com/gpu"]) * workers["maxReplicas"]
        >= deployment.autoscaling_config["max_replicas"]
    )
    assert workers["minReplicas"] >= deployment.autoscaling_config["min_replicas"]
