"""ops/kubernetes/: every manifest against the Kubernetes schemas (kubernetes-validate) and the vendored
CRDs of the Gateway API and the Inference Extension (tests/fixtures/crds/), the endpoint picker's
configurations and endpoints file against the shapes llm-d-router documents, and the daemon's own
configuration against our parser. No cluster runs here."""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrator.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops" / "kubernetes"
CRDS = ROOT / "tests" / "fixtures" / "crds"
# The plugin types these configurations use, as registered in llm-d-router v0.10.
PLUGIN_TYPES = {
    "metrics-data-source", "core-metrics-extractor", "lora-affinity-scorer", "queue-scorer",
    "kv-cache-utilization-scorer", "max-score-picker", "single-profile-handler", "file-discovery",
}  # fmt: skip


def documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def resources() -> Iterator[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((OPS / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        for document in documents(OPS / name):
            yield name, document


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's schema, with unknown fields refused as the API server's pruning would drop them."""
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) if isinstance(value, dict) else value for key, value in schema.items()}
    if "properties" in schema:
        schema["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    if isinstance(schema.get("items"), dict):
        schema["items"] = strict(schema["items"])
    return schema


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in CRDS.glob("*.yaml"):
        [crd] = documents(path)
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            found[api_version, crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return found


def test_the_kustomization_lists_every_manifest_and_each_is_valid_for_kubernetes() -> None:
    listed = set(yaml.safe_load((OPS / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in OPS.glob("*.yaml")} - {"kustomization.yaml"}
    crds = crd_schemas()
    kinds = []
    for name, resource in resources():
        kinds.append(resource["kind"])
        schema = crds.get((resource["apiVersion"], resource["kind"]))
        if schema is None:
            kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)
        else:
            errors = list(jsonschema.Draft7Validator(strict(schema)).iter_errors(resource))
            assert not errors, (name, [error.message for error in errors])
    assert {"DaemonSet", "Service", "ConfigMap", "Secret", "InferencePool", "HTTPRoute", "Deployment"} <= set(
        kinds
    )


def test_a_wrong_field_in_a_custom_resource_is_caught() -> None:
    """The check above can fail: a misspelt field and a missing one are both reported."""
    [pool] = documents(OPS / "inferencepool.yaml")
    schema = strict(crd_schemas()["inference.networking.k8s.io/v1", "InferencePool"])
    broken = {**pool, "spec": {**pool["spec"], "targetPort": [{"number": 8080}]}}
    del broken["spec"]["targetPorts"]
    messages = [error.message for error in jsonschema.Draft7Validator(schema).iter_errors(broken)]
    assert any("targetPorts" in message for message in messages)
    assert any("targetPort" in message and "unexpected" in message for message in messages)


def test_the_pool_selects_the_daemons_on_their_port_and_the_route_sends_to_the_pool() -> None:
    found = dict(((r["kind"], r["metadata"]["name"]), r) for _, r in resources())
    daemons = found["DaemonSet", "llama-sidecar"]["spec"]["template"]
    pool = found["InferencePool", "llama-sidecar"]["spec"]
    assert pool["selector"]["matchLabels"].items() <= daemons["metadata"]["labels"].items()
    assert pool["targetPorts"] == [{"number": daemons["spec"]["containers"][0]["ports"][0]["containerPort"]}]
    picker = found["Service", pool["endpointPickerRef"]["name"]]["spec"]["ports"][0]
    assert picker["port"] == pool["endpointPickerRef"]["port"]["number"]
    [rule] = found["HTTPRoute", "llama-sidecar"]["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "llama-sidecar"}
    ]
    probe = daemons["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health"  # 503 while the daemon drains


def picker_configs() -> dict[str, dict[str, Any]]:
    [embedded] = [
        r for _, r in resources() if r["kind"] == "ConfigMap" and r["metadata"]["name"].endswith("epp")
    ]
    return {
        "in-cluster": yaml.safe_load(embedded["data"]["epp-config.yaml"]),
        "file-discovery": yaml.safe_load((OPS / "file-discovery" / "epp-config.yaml").read_text()),
    }


@pytest.mark.parametrize("which", ["in-cluster", "file-discovery"])
def test_the_picker_configuration_has_the_documented_shape_and_weighs_model_affinity_first(
    which: str,
) -> None:
    config = picker_configs()[which]
    assert (config["apiVersion"], config["kind"]) == ("llm-d.ai/v1alpha1", "EndpointPickerConfig")
    assert set(config) <= {"apiVersion", "kind", "plugins", "schedulingProfiles", "dataLayer"}
    names = {plugin.get("name", plugin["type"]) for plugin in config["plugins"]}
    assert {plugin["type"] for plugin in config["plugins"]} <= PLUGIN_TYPES
    [profile] = config["schedulingProfiles"]
    weights = {ref["pluginRef"]: ref.get("weight") for ref in profile["plugins"]}
    assert set(weights) <= names
    scorers = {name: weight for name, weight in weights.items() if weight is not None}
    assert max(scorers, key=lambda name: scorers[name]) == "lora-affinity-scorer"
    if which == "file-discovery":
        assert config["dataLayer"]["discovery"]["pluginRef"] in names
    others = picker_configs()["in-cluster" if which == "file-discovery" else "file-discovery"]
    assert profile == others["schedulingProfiles"][0]  # the same scoring, in or out of a cluster


def test_the_endpoints_file_has_the_documented_shape() -> None:
    endpoints = yaml.safe_load((OPS / "file-discovery" / "endpoints.yaml").read_text())["endpoints"]
    assert endpoints
    for endpoint in endpoints:
        assert set(endpoint) <= {"name", "namespace", "address", "port", "labels"}
        assert isinstance(ipaddress.ip_address(endpoint["address"]), ipaddress.IPv4Address)
        assert isinstance(endpoint["port"], str) and 1 <= int(endpoint["port"]) <= 65535
        assert all(isinstance(v, str) for v in endpoint.get("labels", {}).values())
    assert len({e["name"] for e in endpoints}) == len(endpoints)


def test_the_daemon_configuration_in_the_config_map_is_valid(tmp_path: Path) -> None:
    [config_map] = [r for _, r in resources() if r["metadata"]["name"] == "llama-sidecar-config"]
    [secret] = [r for _, r in resources() if r["kind"] == "Secret"]
    text = config_map["data"]["orchestrator.toml"]
    for key_name in secret["stringData"]:  # the Secret's files, where the DaemonSet mounts them
        (tmp_path / key_name).write_text(secret["stringData"][key_name])
        text = text.replace(f"/etc/llama-sidecar/keys/{key_name}", str(tmp_path / key_name))
    document = tomllib.loads(text.replace('"/models/', f'"{tmp_path}/'))
    for model in document["models"].values():  # the node's model files, mounted at /models
        Path(model["path"]).touch()
    config = parse_config(document, "ops/kubernetes/config.yaml", tmp_path)
    assert config.server.metrics_without_key and config.server.drain_notice_s > 0
    assert config.server.api_keys and config.server.admin_keys
