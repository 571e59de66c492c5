"""The repositories the tier creates: KMS, scanning, tag mutability, lifecycle and tags set
at CreateRepository time; an existing repository reported, never altered; a denied
CreateRepository degrades the tier to read-only for that repository.

The denial is injected by ``AwsFront`` (a proxy in front of moto that answers the chosen
operations with AccessDeniedException, worded as AWS words it), not by moto's IAM mode.
"""

from __future__ import annotations

import json

from tests.support.ecr_fleet import *  # noqa: F401,F403 - the fixtures
from tests.support.ecr_fleet import ecr_auth, ecr_repo, origin_counts, pull, wait_written
from tests.support.http import request
from tests.support.images import build_image, push

KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/0f2c43c6-0000-4000-8000-000000000001"


def counted(origin) -> tuple[int, ...]:
    """(manifest GETs, manifest HEADs, blob GETs, blob HEADs) at the origin."""
    return tuple(origin_counts(origin).values())


def test_repository_created_with_the_settings(node, origin, registry, moto, aws):
    image = build_image("gov-settings", layer_sizes=(30_000,))
    push(registry, "gov/settings", "v1", image)
    pc = node("a", encryption="KMS", kms_key=KMS_KEY, scan_on_push=True,
              tag_mutability="IMMUTABLE", expire_untagged_after="14d",
              repository_tags={"team": "platform", "cost-center": "42"})
    pull(pc, "gov/settings", "v1", image)
    wait_written(pc, len(image.blobs()) + 1)
    assert counted(origin) == (1, 1, len(image.blobs()), 0)
    name = ecr_repo(origin, "gov/settings")
    ecr = moto.client()
    repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    assert repo["encryptionConfiguration"] == {"encryptionType": "KMS", "kmsKey": KMS_KEY}
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repo["imageTagMutability"] == "IMMUTABLE"
    tags = ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"]
    assert {t["Key"]: t["Value"] for t in tags} == {"team": "platform", "cost-center": "42"}
    policy = json.loads(ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"])
    [rule] = policy["rules"]
    assert rule["selection"] == {"tagStatus": "untagged", "countType": "sinceImagePushed",
                                 "countUnit": "days", "countNumber": 14}
    assert rule["action"] == {"type": "expire"}
    assert aws.count("CreateRepository") == 1 and aws.count("PutLifecyclePolicy") == 1
    assert pc.events("ecr_repository_created")


def test_lifecycle_policy_file(node, origin, registry, moto, tmp_path):
    text = json.dumps({"rules": [{"rulePriority": 1, "description": "keep 100 images",
                                  "selection": {"tagStatus": "any", "countType":
                                                "imageCountMoreThan", "countNumber": 100},
                                  "action": {"type": "expire"}}]})
    (tmp_path / "policy.json").write_text(text)
    image = build_image("gov-policy", layer_sizes=(10_000,))
    push(registry, "gov/policy", "v1", image)
    pc = node("a", lifecycle_policy=str(tmp_path / "policy.json"))
    pull(pc, "gov/policy", "v1", image)
    wait_written(pc, len(image.blobs()) + 1)
    assert counted(origin) == (1, 1, len(image.blobs()), 0)
    got = moto.client().get_lifecycle_policy(repositoryName=ecr_repo(origin, "gov/policy"))
    assert json.loads(got["lifecyclePolicyText"]) == json.loads(text)


def test_existing_repository_is_reported_once_never_altered(node, origin, registry, moto,
                                                            aws):
    name = ecr_repo(origin, "gov/existing")
    moto.client().create_repository(repositoryName=name, imageTagMutability="MUTABLE")
    first = build_image("gov-existing-1", layer_sizes=(10_000,))
    second = build_image("gov-existing-2", layer_sizes=(11_000,))
    push(registry, "gov/existing", "v1", first)
    push(registry, "gov/existing", "v2", second)
    pc = node("a", scan_on_push=True, tag_mutability="IMMUTABLE",
              repository_tags={"team": "platform"}, expire_untagged_after="30d")
    pull(pc, "gov/existing", "v1", first)
    wait_written(pc, len(first.blobs()) + 1)
    pull(pc, "gov/existing", "v2", second)
    wait_written(pc, 2 * (len(first.blobs()) + 1))
    assert counted(origin) == (2, 2, 2 * len(first.blobs()), 0)
    [drift] = pc.events("ecr_repository_settings_differ")
    assert drift["level"] == "warning" and drift["repository"] == name
    assert any("scan_on_push" in d for d in drift["differences"])
    assert any("tag_mutability" in d for d in drift["differences"])
    assert any("team" in d for d in drift["differences"])
    assert "lifecycle_policy" in drift["differences"]
    repo = moto.client().describe_repositories(repositoryNames=[name])["repositories"][0]
    assert repo["imageTagMutability"] == "MUTABLE"
    assert repo["imageScanningConfiguration"] == {"scanOnPush": False}
    assert aws.count("PutLifecyclePolicy") == 0 and aws.count("TagResource") == 0


def test_denied_create_repository_degrades_to_read_only(node, origin, registry, aws,
                                                        ecr_front):
    aws.deny.add("CreateRepository")
    first = build_image("gov-denied-1", layer_sizes=(20_000,))
    second = build_image("gov-denied-2", layer_sizes=(21_000,))
    push(registry, "gov/denied", "v1", first)
    push(registry, "gov/denied", "v2", second)
    pc = node("a", repository_tags={"team": "platform"})
    pull(pc, "gov/denied", "v1", first)           # the client sees nothing of it
    wait_written(pc, len(first.blobs()) + 1)
    pull(pc, "gov/denied", "v2", second)
    wait_written(pc, 2 * (len(first.blobs()) + 1))
    assert counted(origin) == (2, 2, 2 * len(first.blobs()), 0)
    [line] = pc.events("ecr_repository_create_denied")    # one line, not one per job
    assert line["level"] == "error" and line["action"] == "ecr:CreateRepository"
    assert line["needs"] == ["ecr:CreateRepository", "ecr:TagResource"]
    assert aws.count("CreateRepository") == 1               # not asked again per job
    assert pc.metric("pullcache_tier_writes_total", outcome="denied") == \
        2 * (len(first.blobs()) + 1)
    assert ecr_front.count("POST") == 0 and ecr_front.count("PUT") == 0   # read-only
    assert "Traceback" not in pc.log()


def test_immutable_tag_skips_cleanly_digest_still_pushed(node, origin, registry, ecr_registry,
                                                         ecr_front):
    old = build_image("gov-immutable-old", layer_sizes=(5_000,))
    new = build_image("gov-immutable-new", layer_sizes=(6_000,))
    name = ecr_repo(origin, "gov/immutable")
    # The tier already has v1, pointing at an older digest (another node, last week).
    push(ecr_registry, name, "v1", old, username="AWS", password=ecr_registry.password)
    push(registry, "gov/immutable", "v1", new)
    pc = node("a", tag_mutability="IMMUTABLE")
    pull(pc, "gov/immutable", "v1", new)
    wait_written(pc, len(new.blobs()) + 1)
    assert counted(origin) == (1, 1, len(new.blobs()), 0)
    auth = ecr_auth(ecr_registry, new.media_type)
    assert request(ecr_registry.url, f"/v2/{name}/manifests/v1", headers=auth).body == \
        old.manifest                                         # the tag was left alone …
    assert request(ecr_registry.url, f"/v2/{name}/manifests/{new.digest}",
                   headers=auth).body == new.manifest        # … the digest went up
    assert pc.events("tier_tag_skipped")[0]["reason"] == "immutable"
    assert ecr_front.count("PUT", "/manifests/v1") == 0
    assert pc.metric("pullcache_tier_writes_total", outcome="failed") == 0
