"""The S3 tier: any S3-compatible store (S3, MinIO, Ceph RGW, R2, GCS) as a fleet's shared
cache (``tier.S3Tier``; docs/operations.md §13)."""
