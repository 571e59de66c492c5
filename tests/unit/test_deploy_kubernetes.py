"""deploy/kubernetes: yamllint, each overlay assembled as kustomize would, every document
checked against the Kubernetes API's models (the ``kubernetes`` package: unknown fields,
wrong types and missing required fields fail), and the config it ships loaded by pullcache
itself."""

from __future__ import annotations

import copy
import datetime
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes.client.models as models
import pytest
import yaml

from pullcache import config as configuration
from tests.support.binaries import require

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBE = DEPLOY / "kubernetes"
OVERLAYS = sorted(p.parent for p in (KUBE / "overlays").glob("*/kustomization.yaml"))
CLUSTER_SCOPED = {"Namespace"}


# -- a kustomize for what these files use: resources, namespace, labels, images, patches ---

def build(directory: Path) -> list[dict]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "namespace", "resources", "labels", "images", "patches"}
    assert set(k) <= known, f"{directory}: kustomize fields this test does not model: " \
                            f"{set(k) - known}"
    docs: list[dict] = []
    for entry in k.get("resources", []):
        path = directory / entry
        docs += build(path) if path.is_dir() else \
            [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in k.get("patches", []):
        for change in yaml.safe_load_all((directory / patch["path"]).read_text()):
            target = [d for d in docs if d["kind"] == change["kind"]
                      and d["metadata"]["name"] == change["metadata"]["name"]]
            assert len(target) == 1, f"{patch}: matches {len(target)} resources"
            merge(target[0], change)
    for doc in docs:
        if k.get("namespace") and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = k["namespace"]
        for label in k.get("labels", []):
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
        for image in k.get("images", []):
            for c in containers(doc):
                if c["image"] == image["name"]:
                    c["image"] = f"{image['newName']}:{image['newTag']}"
    return docs


def merge(into: dict, change: dict) -> None:
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


# -- strict validation against the API models -------------------------------------------

def check(value, kind: str, where: str) -> None:
    """``value`` against the client's type string (``V1DaemonSet``, ``list[V1Volume]``,
    ``dict(str, str)``, ``int``, ``object`` …)."""
    if m := re.fullmatch(r"[lL]ist\[(.+)\]", kind):
        assert isinstance(value, list), f"{where}: want a list, got {value!r}"
        for i, item in enumerate(value):
            check(item, m.group(1), f"{where}[{i}]")
        return
    if m := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", kind):
        assert isinstance(value, dict), f"{where}: want a map, got {value!r}"
        for key, item in value.items():
            check(item, m.group(1) or m.group(2), f"{where}.{key}")
        return
    primitive = {"str": str, "int": int, "bool": bool, "float": (int, float),
                 "datetime": (str, datetime.datetime), "date": str}
    if kind in primitive:
        ok = isinstance(value, primitive[kind]) and not (kind == "int" and
                                                         isinstance(value, bool))
        assert ok, f"{where}: want {kind}, got {value!r}"
        return
    if kind == "object":   # IntOrString, raw JSON
        return
    model = getattr(models, kind)
    assert isinstance(value, dict), f"{where}: want a {kind} object, got {value!r}"
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    unknown = set(value) - set(by_json)
    assert not unknown, f"{where}: fields {kind} does not have: {sorted(unknown)}"
    for key, item in value.items():
        check(item, model.openapi_types[by_json[key]], f"{where}.{key}")


def model_of(doc: dict) -> str:
    version = doc["apiVersion"].split("/")[-1]
    return version[0].upper() + version[1:] + doc["kind"]


def deserialize(doc: dict, kind: str):
    """The client's own deserializer (it raises on a required field left out)."""
    from kubernetes.client import ApiClient
    return ApiClient()._ApiClient__deserialize(doc, kind)


# -- the tests ------------------------------------------------------------------------

def test_yamllint_passes():
    done = subprocess.run([require("yamllint"), "--strict", "-c", str(DEPLOY / ".yamllint"), str(KUBE)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_overlays_are_node_local_and_site_mirror():
    assert [p.name for p in OVERLAYS] == ["node-local", "site-mirror"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_document_matches_the_kubernetes_api(overlay):
    docs = build(overlay)
    assert len(docs) >= 4
    for doc in docs:
        kind = model_of(doc)
        where = f"{overlay.name}: {doc['kind']}/{doc['metadata']['name']}"
        check(doc, kind, where)
        assert type(deserialize(doc, kind)).__name__ == kind
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == "pullcache", where
        for c in containers(doc):
            assert c["image"] == "registry.example.internal/pullcache:0.1.0", where


def test_a_wrong_field_or_type_is_caught():
    daemonset = next(d for d in build(KUBE / "overlays/node-local") if d["kind"] == "DaemonSet")
    typo = copy.deepcopy(daemonset)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(AssertionError, match="does not have: \\['readinesProbe'\\]"):
        check(typo, "V1DaemonSet", "typo")
    wrong = copy.deepcopy(daemonset)
    wrong["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "40"
    with pytest.raises(AssertionError, match="want int"):
        check(wrong, "V1DaemonSet", "wrong")
    missing = copy.deepcopy(daemonset)
    del missing["spec"]["selector"]
    with pytest.raises(ValueError, match="selector"):
        deserialize(missing, "V1DaemonSet")


def workload(overlay: str) -> dict:
    kinds = {"node-local": "DaemonSet", "site-mirror": "Deployment"}
    return next(d for d in build(KUBE / "overlays" / overlay) if d["kind"] == kinds[overlay])


def test_node_local_daemonset_sets_up_containerd_and_probes_the_admin_port():
    spec = workload("node-local")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    init = spec["initContainers"][0]
    assert init["command"][:3] == ["pullcache", "node-setup", "containerd"]
    assert "--root" in init["command"]
    main = spec["containers"][0]
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == \
        {"registry": 5000, "admin": 5001, "peers": 5002}
    assert main["resources"]["requests"]
    cache = next(v for v in spec["volumes"] if v["name"] == "cache")
    assert cache["emptyDir"]["sizeLimit"]
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    peers = next(d for d in build(KUBE / "overlays/node-local") if d["kind"] == "Service")
    assert peers["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("overlay", ["node-local", "site-mirror"])
def test_the_shipped_config_loads_in_pullcache(overlay, tmp_path):
    config_map = next(d for d in build(KUBE / "overlays" / overlay) if d["kind"] == "ConfigMap")
    path = tmp_path / "config.toml"
    path.write_text(config_map["data"]["config.toml"])
    # (A Secret's value stands in as a token: the Secret is the operator's to create.)
    env = {e["name"]: e.get("value", "t0ken-from-the-secret-0123456789")
           for c in workload(overlay)["spec"]["template"]["spec"]["containers"]
           for e in c.get("env", []) if e["name"].startswith("PULLCACHE_")}
    env = {k: v.replace("$(NODE_IP)", "10.0.0.7") for k, v in env.items()}
    cfg = configuration.load(path, env)
    assert str(cfg.cache.dir) == "/var/cache/pullcache"
    if overlay == "site-mirror":
        assert str(cfg.server.tls_cert) == "/etc/pullcache/tls/tls.crt"
        mounts = {m["mountPath"] for m in workload(overlay)["spec"]["template"]["spec"]
                  ["containers"][0]["volumeMounts"]}
        assert "/etc/pullcache/tls" in mounts
    else:
        assert cfg.server.admin_listen == "10.0.0.7:5001"
        # Cluster mode: members from the headless Service, peer requests on the node's
        # address (the Service's peers port), the mirror itself on loopback.
        assert cfg.cluster.peers_dns == "pullcache-peers.pullcache.svc.cluster.local:5002"
        assert cfg.cluster.listen == "10.0.0.7:5002" and cfg.cluster.token
        assert cfg.server.listen.startswith("127.0.0.1:")
        peers = next(d for d in build(KUBE / "overlays/node-local") if d["kind"] == "Service")
        assert {"name": "peers", "port": 5002, "targetPort": 5002} in peers["spec"]["ports"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_kubectl_kustomize_builds_the_same(overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (optional: the assembler above stands in)")
    done = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    theirs = [d for d in yaml.safe_load_all(done.stdout) if d]
    key = lambda d: (d["kind"], d["metadata"]["name"])   # noqa: E731
    assert sorted(theirs, key=key) == sorted(build(overlay), key=key)
