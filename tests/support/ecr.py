"""Amazon ECR, offline: moto in server mode is the ECR API, a real Distribution registry with
htpasswd user ``AWS`` and moto's token password is the ECR registry endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .registry import Registry, start_registry

ACCOUNT = "123456789012"       # moto's account id
REGION = "us-east-1"
PASSWORD = f"{ACCOUNT}-auth-token"  # moto's GetAuthorizationToken decodes to AWS:<this>
# The AWS SDK must never look beyond 127.0.0.1 for credentials or an endpoint.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


@dataclass
class MotoEcr:
    url: str

    def client(self):
        import boto3
        return boto3.client("ecr", region_name=REGION, endpoint_url=self.url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def repositories(self) -> set[str]:
        pages = self.client().get_paginator("describe_repositories").paginate()
        return {r["repositoryName"] for page in pages for r in page["repositories"]}


def start_moto():
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, MotoEcr(f"http://{host}:{port}")


def start_ecr_registry(workdir: Path) -> Registry:
    return start_registry(workdir, "basic", username="AWS", password=PASSWORD)


def backing_config(moto: MotoEcr, registry_url: str, **extra) -> dict:
    return {"enabled": True, "region": REGION, "registry_id": ACCOUNT,
            "repository_prefix": "pullcache", "endpoint_url": moto.url,
            "registry_url": registry_url, "drain_timeout": "2s", **extra}
