"""The tier contract's pure parts: typed verdicts, what the ECR tier's repositories and
uploads remember (and for how long), a repository's settings as one resumable step, and
manifests kept as artifacts with their media type."""

from __future__ import annotations

import json

import pytest

from pullcache import errors
from pullcache.backing.content import artifact, artifact_media_type, artifact_tag
from pullcache.backing.contract import TierError, Verdict, verdict_of
from pullcache.backing.ecr import IamDenied
from pullcache.backing.repositories import Repositories, RepositorySettings
from pullcache.backing.tier import EcrTier
from pullcache.backing.uploads import Uploads
from pullcache.oci import DOCKER_V1_SIGNED, OCI_MANIFEST, Digest
from pullcache.upstream.client import Manifest
from pullcache.upstream.failures import error_for


def registry_error(status: int, code: str) -> errors.PullcacheError:
    body = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
    return error_for(status, {}, body, errors.ManifestUnknown, "ecr-tier")


@pytest.mark.parametrize("exc, writing, verdict", [
    (registry_error(400, "MANIFEST_BLOB_UNKNOWN"), True, Verdict.REFUSED),
    (registry_error(400, "MANIFEST_INVALID"), True, Verdict.REFUSED),
    (registry_error(404, "MANIFEST_UNKNOWN"), False, Verdict.MISSING),
    (registry_error(404, "NAME_UNKNOWN"), False, Verdict.MISSING),
    (registry_error(429, "TOOMANYREQUESTS"), True, Verdict.RETRY),
    (registry_error(503, "UNAVAILABLE"), True, Verdict.RETRY),
    (registry_error(403, "DENIED"), True, Verdict.DENIED),
    (errors.CircuitOpen("open", headers={"Retry-After": "7"}), True, Verdict.RETRY),
    (errors.NameInvalid("ECR create_repository: InvalidParameterException: …"), True,
     Verdict.SKIP),
    (IamDenied("ECR create_repository: AccessDeniedException", "ecr:CreateRepository"), True,
     Verdict.DENIED),
    (registry_error(400, "NAME_INVALID"), True, Verdict.SKIP),
    (registry_error(400, "BLOB_UPLOAD_INVALID"), True, Verdict.RETRY),
    (registry_error(502, "UPSTREAM_ERROR"), True, Verdict.RETRY),
])
def test_verdicts_are_typed(exc, writing, verdict):
    got = verdict_of(exc, writing=writing)
    assert isinstance(got, TierError) and got.verdict == verdict
    assert got.status == exc.status


def test_verdict_details():
    opened = verdict_of(errors.CircuitOpen("open", headers={"Retry-After": "7"}))
    assert opened.sent is False and opened.retry_after == 7.0
    assert verdict_of(registry_error(429, "TOOMANYREQUESTS")).throttled is True
    assert verdict_of(registry_error(503, "UNAVAILABLE")).throttled is False
    assert verdict_of(IamDenied("d", "kms:CreateGrant")).action == "kms:CreateGrant"
    assert verdict_of(registry_error(400, "TAG_INVALID")).remote_code == "TAG_INVALID"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class Api:
    """CreateRepository and friends in memory; ``deny``/``fail`` per operation."""

    def __init__(self) -> None:
        self.repos: set[str] = set()
        self.calls: list[str] = []
        self.deny: set[str] = set()
        self.fail: dict[str, list[Exception]] = {}
        self.policies: dict[str, str] = {}

    def _enter(self, op: str) -> None:
        self.calls.append(op)
        if op in self.deny:
            raise IamDenied(f"ECR {op}: AccessDeniedException", f"ecr:{op}")
        if self.fail.get(op):
            raise self.fail[op].pop(0)

    async def create_repository(self, name, settings) -> bool:
        self._enter("CreateRepository")
        if name in self.repos:
            return False
        self.repos.add(name)
        return True

    async def describe_repository(self, name):
        self._enter("DescribeRepositories")
        if name not in self.repos:
            raise errors.NameUnknown(name)
        return {"repositoryArn": f"arn:{name}", "imageTagMutability": "MUTABLE"}

    async def repository_tags(self, arn):
        return []

    async def lifecycle_policy(self, name):
        return self.policies.get(name, "")

    async def put_lifecycle_policy(self, name, policy) -> None:
        self._enter("PutLifecyclePolicy")
        self.policies[name] = policy


POLICY = json.dumps({"rules": []})


async def test_a_denied_create_uses_a_repository_that_exists():
    api = Api()
    api.repos.add("pc/up/made-by-terraform")
    api.deny.add("CreateRepository")
    repos = Repositories(api, RepositorySettings())
    await repos.ensure("pc/up/made-by-terraform")
    assert repos.status() == {"pc/up/made-by-terraform": "existing"}
    with pytest.raises(TierError) as denied:
        await repos.ensure("pc/up/absent")
    assert denied.value.verdict == Verdict.DENIED
    assert denied.value.action == "ecr:CreateRepository"


async def test_a_lifecycle_policy_that_failed_after_create_is_put_by_the_next_ensure():
    api = Api()
    api.fail["PutLifecyclePolicy"] = [errors.TooManyRequests("ECR put_lifecycle_policy")]
    repos = Repositories(api, RepositorySettings(lifecycle_policy=POLICY))
    with pytest.raises(TierError) as throttled:
        await repos.ensure("pc/up/app")
    assert throttled.value.verdict == Verdict.RETRY
    await repos.ensure("pc/up/app")     # the repository exists now: its settings finished
    assert api.policies == {"pc/up/app": POLICY}
    assert repos.status() == {"pc/up/app": "created"}


async def test_a_name_ecr_refuses_is_skipped_for_good():
    api = Api()
    api.fail["CreateRepository"] = [errors.NameInvalid("InvalidParameterException: bad name")]
    repos = Repositories(api, RepositorySettings())
    for _ in range(3):
        with pytest.raises(TierError) as skipped:
            await repos.ensure("pc/up/bad")
        assert skipped.value.verdict == Verdict.SKIP and "bad name" in str(skipped.value)
    assert api.calls == ["CreateRepository"]


async def test_what_is_known_of_repositories_expires_and_is_dropped_on_name_unknown():
    api, clock = Api(), Clock()
    repos = Repositories(api, RepositorySettings(), ttl=60, clock=clock)
    await repos.ensure("pc/up/app")
    await repos.ensure("pc/up/app")
    assert api.calls == ["CreateRepository"]
    clock.now += 61                       # deleted outside pullcache meanwhile, perhaps
    api.repos.clear()
    await repos.ensure("pc/up/app")
    assert api.calls == ["CreateRepository"] * 2 and "pc/up/app" in api.repos
    api.repos.clear()
    repos.forget("pc/up/app")             # NAME_UNKNOWN from the registry
    await repos.ensure("pc/up/app")
    assert api.calls == ["CreateRepository"] * 3


async def test_content_known_present_expires():
    class Registry:
        heads = 0
        present = True

        async def exists(self, repo, kind, ref):
            self.heads += 1
            return self.present
    registry, clock = Registry(), Clock()
    uploads = Uploads(registry, Repositories(Api(), RepositorySettings()), "pc/manifests",
                      ttl=60, clock=clock)
    digest = Digest.of(b"m")
    assert await uploads.has_manifest("pc/up/app", digest)
    assert await uploads.has_manifest("pc/up/app", digest) and registry.heads == 1
    clock.now += 61                       # a lifecycle rule may have expired it
    registry.present = False
    assert not await uploads.has_manifest("pc/up/app", digest) and registry.heads == 2
    registry.present = True
    assert await uploads.has_manifest("pc/up/app", digest)
    uploads.forget("pc/up/app", "manifest", str(digest))   # MANIFEST_UNKNOWN on a read
    registry.present = False
    assert not await uploads.has_manifest("pc/up/app", digest)


def test_artifact_tags_stay_within_128_characters():
    sha512 = Digest.parse("sha512:" + "ab" * 64)
    assert len(artifact_tag(sha512)) == 128 and artifact_tag(sha512).startswith("sha512-")
    sha256 = Digest.of(b"x")
    assert artifact_tag(sha256) == f"sha256-{sha256.hex}"


async def test_a_manifest_kept_as_an_artifact_keeps_its_media_type():
    """A schema1 manifest has no mediaType in its body: read back from the manifest store,
    it is served as what it was stored as, not guessed as OCI."""
    body = json.dumps({"schemaVersion": 1, "name": "a", "tag": "v1", "fsLayers": [],
                       "signatures": []}).encode()
    digest = Digest.of(body)
    held = artifact(body, DOCKER_V1_SIGNED, digest)
    assert artifact_media_type(held, digest) == DOCKER_V1_SIGNED

    class Stream:
        size = len(body)

        async def chunks(self):
            yield body

        async def close(self):
            pass

    class Registry:
        breaker = None

        async def get_manifest(self, repo, reference, accept):
            if repo == "pc/manifests" and reference == artifact_tag(digest):
                return Manifest(held, OCI_MANIFEST, None)
            raise errors.ManifestUnknown(reference)

        async def open_blob(self, repo, ref):
            assert repo == "pc/manifests" and ref == digest
            return Stream()
    tier = EcrTier(Api(), Registry(), "pc")
    got = await tier.get_manifest("up", "team/app", digest)
    assert got.body == body and got.content_type == DOCKER_V1_SIGNED


async def test_settings_a_crash_left_unfinished_are_applied_after_the_restart(tmp_path):
    """CreateRepository done, then the process died before PutLifecyclePolicy: the next
    process applies the policy (the repository is its own, recorded in the journal), where
    a repository made by someone else is never altered."""
    from pullcache.backing.journal import Journal
    api = Api()
    journal = Journal(tmp_path / "q").open()
    api.fail["PutLifecyclePolicy"] = [RuntimeError("the process died here")]
    first = Repositories(api, RepositorySettings(lifecycle_policy=POLICY), record=journal)
    with pytest.raises(RuntimeError):
        await first.ensure("pc/up/app")
    assert "pc/up/app" in api.repos and api.policies == {}
    api.repos.add("pc/up/theirs")                            # made by Terraform, no policy
    again = Repositories(api, RepositorySettings(lifecycle_policy=POLICY), record=journal)
    await again.ensure("pc/up/app")
    await again.ensure("pc/up/theirs")
    assert api.policies == {"pc/up/app": POLICY}
    assert again.status() == {"pc/up/app": "created", "pc/up/theirs": "existing"}
    assert journal.unsettled() == set()
    journal.close()
