"""deploy/kserve: the InferenceService validates against KServe's CRD and serves the Triton export."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests import static_checks as sc

DOCUMENTS = list(sc.kserve_documents())


@pytest.fixture(scope="module")
def isvc() -> dict[str, Any]:
    triton = [doc for path, doc in DOCUMENTS if path.name == "inferenceservice-triton.yaml"]
    assert len(triton) == 1
    return triton[0]


@pytest.mark.parametrize("document", [doc for _, doc in DOCUMENTS], ids=[p.name for p, _ in DOCUMENTS])
def test_validates_strictly_against_the_crd(document: dict[str, Any]) -> None:
    assert sc.kserve_errors(document) == []


def test_validation_rejects_unknown_fields_and_wrong_types(isvc: dict[str, Any]) -> None:
    broken = copy.deepcopy(isvc)
    broken["spec"]["predictor"]["model"]["storageUrl"] = broken["spec"]["predictor"]["model"].pop(
        "storageUri"
    )
    broken["spec"]["predictor"]["minReplicas"] = "one"
    errors = " ".join(sc.kserve_errors(broken))
    assert "storageUrl" in errors and "'one'" in errors
    assert sc.kserve_errors({**isvc, "kind": "Deployment"})


def test_serves_the_triton_repository_over_the_v2_protocol(isvc: dict[str, Any]) -> None:
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "onnx"
    assert model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"].startswith(("s3://", "gs://", "pvc://", "https://"))
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
