"""The command line in-process: check-config's output, exit codes, errors on stderr (no
daemon started)."""

from __future__ import annotations

import json
import sqlite3

from pullcache.cli import main, render
from pullcache.ops.verify import Verifier


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
