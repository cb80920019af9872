"""The Kubernetes manifests (deploy/kubernetes, a kustomize base), checked offline: every
resource validates against a current Kubernetes API schema (kubernetes-validate), and what the
resources run or mount is checked against this repository."""

from __future__ import annotations

import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from servers.contract import IMPLS, NATIVE_TIER, TIERS

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31.0"  # a current release the schemas are bundled for


def _render() -> list[dict]:
    """The base as kustomize builds it: its resources, the namespace set on each namespaced
    one, and the generated ConfigMap (kustomize adds a hash suffix; the name is its stem)."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = [
        doc
        for resource in kustomization["resources"]
        for doc in yaml.safe_load_all((BASE / resource).read_text())
        if doc
    ]
    for generator in kustomization.get("configMapGenerator", []):
        data = {name: (BASE / name).read_text() for name in generator["files"]}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": generator["name"]}, "data": data})  # fmt: skip
    for doc in docs:
        if doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


RESOURCES = _render()


def _named(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in RESOURCES if d["kind"] == kind}


@pytest.mark.parametrize(
    "resource", RESOURCES, ids=[f"{d['kind']}/{d['metadata']['name']}" for d in RESOURCES]
)
def test_every_resource_validates_against_the_kubernetes_schema(resource: dict) -> None:
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{resource['kind']}/{resource['metadata']['name']}: {exc.message}")


def _containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


def test_every_server_has_a_deployment_and_service_with_whole_guaranteed_cpus() -> None:
    deployments, services = _named("Deployment"), _named("Service")
    for impl in IMPLS:
        (container,) = _containers(deployments[impl])
        assert container["command"][:3] == ["stackbench", "serve", impl]
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], impl  # Guaranteed QoS
        assert str(resources["limits"]["cpu"]).isdigit(), impl  # whole cores
        annotations = deployments[impl]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["stackbench/impl"] == impl
        assert (
            services[impl]["spec"]["selector"]
            == deployments[impl]["spec"]["selector"]["matchLabels"]
        )
        # /upstream calls the upstream Service, which exists.
        upstream = container["command"][container["command"].index("--upstream") + 1]
        assert upstream == "http://upstream:8080" and "upstream" in services


def test_every_server_is_labelled_with_its_tier() -> None:
    deployments = _named("Deployment")
    for impl in IMPLS:
        tier = deployments[impl]["spec"]["template"]["metadata"]["labels"]["stackbench/tier"]
        assert impl in TIERS[tier], f"{impl} is labelled {tier}"
        assert deployments[impl]["metadata"]["labels"]["stackbench/tier"] == tier
    native = {
        n
        for n, d in deployments.items()
        if d["metadata"]["labels"].get("stackbench/tier") == "native"
    }
    assert native == set(NATIVE_TIER)


def test_locust_master_and_scalable_workers_read_scenarios_from_the_image() -> None:
    deployments = _named("Deployment")
    master, worker = (_containers(deployments[n])[0] for n in ("locust-master", "locust-worker"))
    assert "--master" in master["command"]
    assert worker["command"][worker["command"].index("--master-host") + 1] == "locust-master"
    assert "master" in {p["name"] for p in _named("Service")["locust-master"]["spec"]["ports"]}
    for container in (master, worker):
        scenario = container["command"][container["command"].index("-f") + 1]
        assert scenario.startswith("/app/locustfiles/")
        assert (ROOT / "loadtest/locustfiles" / Path(scenario).name).is_file()
    assert "COPY loadtest/locustfiles /app/locustfiles" in (ROOT / "Dockerfile").read_text()


def test_grafana_gets_the_generated_dashboards_and_no_admin() -> None:
    (container,) = _containers(_named("Deployment")["grafana"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert "COPY dashboards/grafana /app/dashboards/grafana" in (ROOT / "Dockerfile").read_text()
    provider = yaml.safe_load(
        (ROOT / "dashboards/grafana/provisioning/dashboards/stackbench.yml").read_text()
    )
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert provider["providers"][0]["options"]["path"] in mounts


def test_prometheus_scrapes_by_annotation_and_may_list_pods() -> None:
    config = yaml.safe_load(_named("ConfigMap")["prometheus-config"]["data"]["prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in ("servers", "locust"):
        assert jobs[name]["kubernetes_sd_configs"][0]["role"] == "pod"
        keep = jobs[name]["relabel_configs"][0]
        assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    impl = [r for r in jobs["servers"]["relabel_configs"] if r.get("target_label") == "impl"]
    assert impl[0]["source_labels"] == ["__meta_kubernetes_pod_annotation_stackbench_impl"]
    (rule,) = _named("Role")["prometheus-discovery"]["rules"]
    assert "pods" in rule["resources"] and "list" in rule["verbs"]
    deployment = _named("Deployment")["prometheus"]["spec"]["template"]["spec"]
    assert deployment["serviceAccountName"] == "prometheus"


def test_images_are_pinned_and_match_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    pinned = {s["image"] for s in compose["services"].values() if "image" in s}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for deployment in _named("Deployment").values():
        spec = deployment["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["image"] in pinned, container["image"]
            assert not container["image"].endswith(":latest")
    assert f"stackbench:{version}" in pinned
