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
    assert Settings(**{**app.args, "api_key": "from-the-secret"}).require_gpu
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


NETWORK_POLICY = RAYSERVICE.with_name("networkpolicy.yaml")


def test_ray_containers_run_without_privileges_and_need_the_api_key(rayservice: dict[str, Any]) -> None:
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["args"]["require_api_key"] is True  # no key: every replica refuses to start
    for name, template in pod_templates(rayservice).items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            [key] = [e for e in container["env"] if e["name"] == "DANET_API_KEY"]
            reference = key["valueFrom"]["secretKeyRef"]
            assert (reference["name"], reference["key"]) == ("danet-serve", "api-key")
            assert reference.get("optional", False) is False, name


def test_only_the_operator_reaches_the_dashboard(rayservice: dict[str, Any]) -> None:
    policy = yaml.safe_load(NETWORK_POLICY.read_text(encoding="utf-8"))
    assert sc.kubernetes_errors([policy]) == []
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/node-type": "head"}
    dashboard = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    port = next(p["containerPort"] for p in dashboard["ports"] if p["name"] == "dashboard")
    rules = policy["spec"]["ingress"]
    open_ports = {p["port"] for rule in rules if "from" not in rule for p in rule["ports"]}
    assert port not in open_ports  # nobody but the selected peers
    [operator_rule] = [rule for rule in rules if "from" in rule]
    assert [p["port"] for p in operator_rule["ports"]] == [port]
    assert operator_rule["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kuberay-operator"
    }
