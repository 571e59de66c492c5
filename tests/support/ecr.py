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


class AwsFront:
    """A proxy in front of moto's ECR API that counts operations (``X-Amz-Target``) and
    answers the ones in ``deny`` with AccessDeniedException, worded as AWS words it, and the
    ones in ``fail`` with the error given (ThrottlingException, InvalidParameterException).

    moto enforces no IAM unless ``MOTO_ENABLE_IAM_AUTH`` is set for the whole process (and
    every other test would then need IAM users); a denial injected here is per test.
    """

    def __init__(self, moto: MotoEcr) -> None:
        from tests.support._aiothread import ThreadedApp

        front = self

        class _App(ThreadedApp):
            thread_name = "aws-front"

            async def make_app(self):
                from aiohttp import web
                app = web.Application(client_max_size=0)
                app.router.add_route("*", "/{tail:.*}", front._handle)
                return app
        self.moto = moto
        self.deny: set[str] = set()
        #: operation → (AWS error type, message): answered with that error (HTTP 400)
        self.fail: dict[str, tuple[str, str]] = {}
        self.operations: list[str] = []
        self._app = _App()

    @property
    def url(self) -> str:
        return self._app.url

    def start(self) -> "AwsFront":
        self._app.start()
        return self

    def stop(self) -> None:
        self._app.stop()

    def count(self, operation: str) -> int:
        return self.operations.count(operation)

    async def _handle(self, request):
        import aiohttp
        from aiohttp import web
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        self.operations.append(operation)
        if operation in self.fail:
            kind, message = self.fail[operation]
            return web.json_response({"__type": kind, "message": message}, status=400,
                                     content_type="application/x-amz-json-1.1")
        if operation in self.deny:
            action = f"ecr:{operation}"
            return web.json_response({
                "__type": "AccessDeniedException",
                "message": f"User: arn:aws:sts::{ACCOUNT}:assumed-role/node/i-0 is not "
                           f"authorized to perform: {action} on resource: arn:aws:ecr:"
                           f"{REGION}:{ACCOUNT}:repository/x because no identity-based "
                           f"policy allows the {action} action"},
                status=400, content_type="application/x-amz-json-1.1")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "transfer-encoding")}
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.request(request.method, self.moto.url + request.path_qs,
                                       data=body, headers=headers) as resp:
                payload = await resp.read()
                keep = {k: v for k, v in resp.headers.items()
                        if k.lower() in ("content-type", "x-amzn-requestid")}
                return web.Response(status=resp.status, body=payload, headers=keep)
