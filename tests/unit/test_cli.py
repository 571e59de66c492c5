"""The command line: check-config's output and exit codes (no daemon started)."""

from __future__ import annotations

from pullcache.cli import main


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
