"""pullcache node-setup on a private --root: what each runtime's files become, idempotence,
backups, --dry-run and --undo."""

from __future__ import annotations

import json
import tomllib

import pytest

from pullcache.cli import main

MIRROR = "http://127.0.0.1:5000"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["node-setup", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_containerd_default_hosts_toml_warns_without_config_path(tmp_path, capsys):
    code, out, err = run(capsys, "containerd", "--root", str(tmp_path), "--mirror", MIRROR)
    assert code == 0
    hosts = tmp_path / "etc/containerd/certs.d/_default/hosts.toml"
    parsed = tomllib.loads(hosts.read_text())
    assert parsed == {"host": {MIRROR: {"capabilities": ["pull", "resolve"]}}}
    assert f"{hosts}: created" in out
    assert "config_path is not set" in err
    assert (tmp_path / "etc/containerd/certs.d/_default/hosts.toml.pullcache-new").exists()


def test_containerd_per_registry_under_the_configured_config_path(tmp_path, capsys):
    conf = tmp_path / "etc/containerd/config.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
                    '  config_path = "/srv/certs:/etc/docker/certs.d"\n')
    code, out, err = run(capsys, "containerd", "--root", str(tmp_path), "--mirror", MIRROR,
                         "--registries", "docker.io,ghcr.io")
    assert code == 0 and err == ""
    hub = tomllib.loads((tmp_path / "srv/certs/docker.io/hosts.toml").read_text())
    assert hub["server"] == "https://registry-1.docker.io"
    assert list(hub["host"]) == [MIRROR]
    ghcr = tomllib.loads((tmp_path / "srv/certs/ghcr.io/hosts.toml").read_text())
    assert ghcr["server"] == "https://ghcr.io"


def test_containerd_2_config_without_local_image_pull_warns(tmp_path, capsys):
    conf = tmp_path / "etc/containerd/config.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text('version = 3\n')
    code, _, err = run(capsys, "containerd", "--root", str(tmp_path))
    assert code == 0
    assert "use_local_image_pull" in err and "config_path" not in err
    conf.write_text('version = 3\n[plugins."io.containerd.cri.v1.images"]\n'
                    '  use_local_image_pull = true\n')
    code, _, err = run(capsys, "containerd", "--root", str(tmp_path))
    assert code == 0 and err == ""


def test_docker_merges_keeping_every_other_key_and_undo_restores(tmp_path, capsys):
    daemon = tmp_path / "etc/docker/daemon.json"
    daemon.parent.mkdir(parents=True)
    original = json.dumps({"log-driver": "journald", "registry-mirrors": ["https://m.example"],
                           "features": {"buildkit": True}})
    daemon.write_text(original)
    daemon.chmod(0o600)
    code, out, err = run(capsys, "docker", "--root", str(tmp_path), "--mirror", MIRROR,
                         "--registries", "docker.io,ghcr.io")
    assert code == 0
    assert "Docker Hub only; not mirrored: ghcr.io" in err
    merged = json.loads(daemon.read_text())
    assert merged == {"log-driver": "journald", "features": {"buildkit": True},
                      "registry-mirrors": [MIRROR, "https://m.example"],
                      "insecure-registries": ["127.0.0.1:5000"]}
    assert daemon.stat().st_mode & 0o777 == 0o600
    assert '+    "http://127.0.0.1:5000",' in out and f"{daemon}: changed" in out
    # Again: nothing to do, and the backup still holds the original.
    code, out, _ = run(capsys, "docker", "--root", str(tmp_path), "--mirror", MIRROR)
    assert code == 0 and out.strip() == f"{daemon}: unchanged"
    assert (tmp_path / "etc/docker/daemon.json.pullcache-orig").read_text() == original
    code, out, _ = run(capsys, "docker", "--root", str(tmp_path), "--undo")
    assert code == 0 and f"{daemon}: restored" in out
    assert daemon.read_text() == original
    assert not (tmp_path / "etc/docker/daemon.json.pullcache-orig").exists()


def test_docker_refuses_a_daemon_json_it_cannot_read(tmp_path, capsys):
    daemon = tmp_path / "etc/docker/daemon.json"
    daemon.parent.mkdir(parents=True)
    daemon.write_text("{not json")
    code, _, err = run(capsys, "docker", "--root", str(tmp_path))
    assert code == 1 and "not JSON" in err
    assert daemon.read_text() == "{not json"


def test_podman_drop_in_routes_each_registry_by_path(tmp_path, capsys):
    code, out, _ = run(capsys, "podman", "--root", str(tmp_path), "--mirror",
                       "http://10.0.0.1:5000", "--registries", "docker.io,quay.io")
    assert code == 0
    drop_in = tmp_path / "etc/containers/registries.conf.d/50-pullcache.conf"
    parsed = tomllib.loads(drop_in.read_text())
    assert parsed["registry"] == [
        {"prefix": "docker.io", "location": "docker.io",
         "mirror": [{"location": "10.0.0.1:5000/docker.io", "insecure": True}]},
        {"prefix": "quay.io", "location": "quay.io",
         "mirror": [{"location": "10.0.0.1:5000/quay.io", "insecure": True}]}]


def test_podman_refuses_a_registry_with_a_port(tmp_path, capsys):
    code, _, err = run(capsys, "podman", "--root", str(tmp_path), "--registries",
                       "registry.local:5000")
    assert code == 1 and "registry.local:5000: podman cannot route" in err
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("runtime", ["containerd", "docker", "podman"])
def test_dry_run_writes_nothing_and_undo_removes_what_was_created(tmp_path, capsys, runtime):
    code, out, _ = run(capsys, runtime, "--root", str(tmp_path), "--dry-run")
    assert code == 0 and "would be created" in out and "+++ " in out
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    code, out, _ = run(capsys, runtime, "--root", str(tmp_path))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 2   # the file and its created-by-node-setup marker
    code, out, _ = run(capsys, runtime, "--root", str(tmp_path), "--undo", "--dry-run")
    assert "would be removed" in out
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == written
    code, out, _ = run(capsys, runtime, "--root", str(tmp_path), "--undo")
    assert code == 0 and ": removed" in out
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    code, out, _ = run(capsys, runtime, "--root", str(tmp_path), "--undo")
    assert ": untouched" in out


def test_a_mirror_that_is_not_a_url_is_a_usage_error(tmp_path, capsys):
    code, _, err = run(capsys, "docker", "--root", str(tmp_path), "--mirror", "127.0.0.1:5000")
    assert code == 2 and "want http(s)://host:port" in err
