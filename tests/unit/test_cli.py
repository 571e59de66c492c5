"""The command line in-process: check-config's output, exit codes, errors on stderr (no
daemon started)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from pullcache import logs
from pullcache.cli import main, render
from pullcache.ops.verify import Verifier
from tests.support.daemon import ROOT
from tests.support.ports import free_port


def test_check_config_prints_the_effective_config_with_secrets_redacted(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.delenv("PULLCACHE_CONFIG", raising=False)
    conf = tmp_path / "pc.toml"
    conf.write_text('[cache]\nmax_size = "10GiB"\n\n[[upstream]]\nhost = "docker.io"\n'
                    'url = "https://registry-1.docker.io"\nusername = "me"\n'
                    'password = "dckr_pat_secret"\n')
    assert main(["check-config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert 'max_size = "10GiB"' in out and 'password = "***"' in out
    assert "dckr_pat_secret" not in out


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PULLCACHE_CONFIG", raising=False)
    conf = tmp_path / "pc.toml"
    conf.write_text('[cache]\nmax_sise = "10GiB"\n')
    assert main(["check-config", str(conf)]) == 2
    assert "cache.max_sise: unknown key" in capsys.readouterr().err


def test_cache_verify_exits_1_with_the_error_when_the_verify_job_itself_fails(
        tmp_path, capsys, monkeypatch):
    """Issue 26 #15: a verify run that crashed (here: the index cannot be read, injected at
    the inventory) said nothing and exited 0, offline and through the daemon alike."""
    monkeypatch.delenv("PULLCACHE_CONFIG", raising=False)
    # The CLI points structlog at this test's captured stderr, which later tests' loggers
    # would keep writing to once it is closed: the session's logging stays as it is.
    monkeypatch.setattr(logs, "setup", lambda *args: None)
    conf = tmp_path / "pc.toml"
    conf.write_text(f'[server]\nadmin_listen = ""\n[cache]\ndir = "{tmp_path / "c"}"\n')

    def broken(self):
        raise sqlite3.DatabaseError("database disk image is malformed")
    monkeypatch.setattr(Verifier, "_inventory", broken)
    assert main(["cache", "verify", "--config", str(conf)]) == 1
    err = capsys.readouterr().err
    assert "cache verify did not finish (failed)" in err and "disk image is malformed" in err
    assert main(["cache", "verify", "--json", "--config", str(conf)]) == 1
    captured = capsys.readouterr()
    job = json.loads(captured.out)
    assert job["state"] == "failed" and "malformed" in job["error"] and "malformed" in captured.err

    # The daemon's failed job (``ops/jobs.py`` snapshot) is rendered by the same code.
    daemon_job = {"id": "verify-1", "kind": "verify", "state": "failed", "error": "boom",
                  "files_total": 3, "files_done": 1, "bytes_total": 0, "bytes_done": 0,
                  "bad": [], "seconds": 0.1, "repair": False}
    assert render.verified(daemon_job, False, render.console()) == 1
    assert "did not finish (failed): boom; checked 1 of 3 files" in capsys.readouterr().err


def test_check_config_refuses_a_lifecycle_policy_serve_could_not_read(tmp_path, capsys,
                                                                       monkeypatch):
    """Issue 26 #17: check-config passed a missing or non-JSON lifecycle_policy; serve then
    failed."""
    monkeypatch.delenv("PULLCACHE_CONFIG", raising=False)
    conf = tmp_path / "pc.toml"
    garbage = tmp_path / "policy.json"
    garbage.write_text("{not json")
    for path, why in ((tmp_path / "absent.json", "cannot read"), (garbage, "is not JSON")):
        conf.write_text(f'[backing.ecr]\nlifecycle_policy = "{path}"\n')
        assert main(["check-config", str(conf)]) == 2
        err = capsys.readouterr().err
        assert "backing.ecr.lifecycle_policy: " in err and why in err, err
    garbage.write_text('{"rules": []}')
    assert main(["check-config", str(conf)]) == 0
    assert f'lifecycle_policy = "{garbage}"' in capsys.readouterr().out


def serve(config: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULLCACHE_")}
    return subprocess.run([sys.executable, "-m", "pullcache", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**env, "PYTHONPATH": str(ROOT)})


def test_serve_reports_why_it_could_not_start_on_stderr(tmp_path):
    """Issue 26 #17: an OSError on the cache dir's lock was logged as listen_failed, with
    nothing on stderr and the listen failure's exit status."""
    cache = tmp_path / "cache"
    (cache / "lock").mkdir(parents=True)     # the lock file cannot be opened (EISDIR)
    conf = tmp_path / "pc.toml"
    upstream = '[[upstream]]\nhost = "127.0.0.1:1"\nurl = "http://127.0.0.1:1"\n'
    conf.write_text(f'[server]\nlisten = "127.0.0.1:{free_port()}"\nadmin_listen = ""\n'
                    f'[cache]\ndir = "{cache}"\n{upstream}')
    proc = serve(conf)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "cannot start: Is a directory" in proc.stderr and str(cache / "lock") in proc.stderr
    assert "EISDIR" in proc.stderr and '"listen_failed"' not in proc.stdout + proc.stderr

    (cache / "lock").rmdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = ""\n'
                        f'[cache]\ndir = "{cache}"\n{upstream}')
        proc = serve(conf)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}: " in proc.stderr
