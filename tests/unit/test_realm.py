"""pullcache.upstream.realm: which token realms may receive an upstream's credentials.

The defect it guards against (issue #8): "the last two host labels" trusted a realm on any
host that shared them, so credentials went to a realm someone else controls.
"""

from __future__ import annotations

import pytest

from pullcache.upstream.realm import RealmTrust, parse_rule

ECR = "https://123456789012.dkr.ecr.us-east-1.amazonaws.com"


@pytest.mark.parametrize("upstream, trusted_realms, realm, trusted", [
    # the upstream's own host, any port
    ("https://ghcr.io", (), "https://ghcr.io/token", True),
    ("https://GHCR.io", (), "https://ghcr.IO/token", True),
    ("https://ghcr.io", (), "https://ghcr.io:8443/token", True),
    ("https://ghcr.io:443", (), "https://ghcr.io:444/token", True),
    ("https://ghcr.io", (), "https://ghcr.io./token", True),                 # FQDN dot
    ("http://10.0.0.5:5000", (), "http://10.0.0.5:5001/token", True),
    ("http://10.0.0.5:5000", (), "http://10.0.0.6:5000/token", False),
    ("http://10.0.0.5", (), "http://0.0.5/token", False),
    ("http://[::1]:5000", (), "http://[::1]:5001/token", True),
    ("http://[::1]:5000", (), "http://[::2]:5000/token", False),
    ("http://localhost:5000", (), "http://127.0.0.1:5001/token", False),
    ("http://registry:5000", (), "http://auth:5000/token", False),
    # a sibling host is not trusted by default (the old rule trusted the whole domain)
    ("https://r.example.com", (), "https://example.com/token", False),
    ("https://r.example.com", (), "https://auth.example.com/token", False),
    ("https://r.example.com", (), "https://example.com.evil.io/token", False),
    ("https://r.example.com", (), "https://r.example.com@evil.io/token", False),  # userinfo
    # shared-provider domains: one registrable domain, many owners
    ("https://myreg.azurecr.io", (), "https://attacker.azurecr.io/oauth2/token", False),
    ("https://myreg.azurecr.io", (), "https://myreg.azurecr.io/oauth2/token", True),
    (ECR, (), "https://abc123.execute-api.us-east-1.amazonaws.com/token", False),
    (ECR, (), "https://999999999999.dkr.ecr.us-east-1.amazonaws.com/", False),
    (ECR, ("*.amazonaws.com",),                                 # the PSL stops the wildcard
     "https://abc123.execute-api.us-east-1.amazonaws.com/token", False),
    ("https://myapp.herokuapp.com", (), "https://evil.herokuapp.com/token", False),
    ("https://myapp.herokuapp.com", ("*.myapp.herokuapp.com",),
     "https://auth.myapp.herokuapp.com/token", True),
    # multi-label public suffixes
    ("https://registry.example.co.uk", (), "https://evil.co.uk/token", False),
    ("https://registry.example.co.uk", (), "https://auth.example.co.uk/token", False),
    ("https://registry.example.co.uk", ("*.example.co.uk",),
     "https://auth.example.co.uk/token", True),
    ("https://registry.example.co.uk", ("*.example.co.uk",), "https://example.co.uk/x", False),
    ("https://registry.example.co.uk", ("*.example.co.uk",), "https://evil.co.uk/x", False),
    ("https://registry.example.co.uk", ("*.example.co.uk",),
     "https://auth.example.co.uk.evil.io/x", False),
    # trusted_realms entries: a host (any port), host:port (that port only)
    ("https://r.example.com", ("auth.example.com",), "https://auth.example.com/token", True),
    ("https://r.example.com", ("auth.example.com",), "https://auth.example.com:8443/t", True),
    ("https://r.example.com", ("auth.example.com:8443",), "https://auth.example.com:8443/t",
     True),
    ("https://r.example.com", ("auth.example.com:8443",), "https://auth.example.com:9443/t",
     False),
    ("https://r.example.com", ("auth.example.com:8443",), "https://auth.example.com/t", False),
    ("https://r.example.com", ("auth.example.com",), "https://x.auth.example.com/t", False),
    # scheme downgrade: credentials meant for TLS never go out in clear text
    ("https://ghcr.io", (), "http://ghcr.io/token", False),
    ("https://r.example.com", ("auth.example.com",), "http://auth.example.com/token", False),
    ("http://10.0.0.5:5000", (), "https://10.0.0.5/token", True),
    ("https://ghcr.io", (), "ftp://ghcr.io/token", False),
    # presets
    ("https://registry-1.docker.io", (), "https://auth.docker.io/token", True),
    ("https://index.docker.io", (), "https://auth.docker.io/token", True),
    ("https://registry-1.docker.io", (), "https://evil.docker.io/token", False),
    ("https://ghcr.io", (), "https://auth.docker.io/token", False),
    ("https://quay.io", (), "https://quay.io/v2/auth", True),
    ("https://gcr.io", (), "https://gcr.io/v2/token", True),
    ("https://eu.gcr.io", (), "https://gcr.io/v2/token", True),
    ("https://europe-docker.pkg.dev", (), "https://europe-docker.pkg.dev/v2/token", True),
    ("https://europe-docker.pkg.dev", (), "https://us-docker.pkg.dev/v2/token", True),
    ("https://europe-docker.pkg.dev", (), "https://gcr.io/v2/token", False),
    ("https://public.ecr.aws", (), "https://public.ecr.aws/token/", True),
    # no host at all
    ("https://ghcr.io", (), "/token", False),
    ("https://ghcr.io", (), "", False),
    ("", (), "https://ghcr.io/token", False),
    ("https://ghcr.io", (), "https://ghcr.io:99999/token", False),
])
def test_realm_trust(upstream, trusted_realms, realm, trusted):
    assert RealmTrust(upstream, trusted_realms).allows(realm) is trusted


@pytest.mark.parametrize("entry", ["", "*.", "https://auth.example.com", "a/b", "u@host",
                                   "*.example.com:443", "auth.example.com:http", "a*.b.com"])
def test_malformed_rules_are_refused(entry):
    with pytest.raises(ValueError):
        parse_rule(entry)
