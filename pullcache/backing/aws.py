"""One aiobotocore client held for the app's lifetime: the ECR API's and the S3 tier's."""

from __future__ import annotations

from typing import Any, Self


class AioClient:
    """``open``/``close``, or ``async with``; a subclass says how its client is made
    (``_create``: aiobotocore's ``session.create_client(...)`` context)."""

    _client: Any = None
    _exit: Any = None

    def _create(self) -> Any:
        raise NotImplementedError

    async def open(self) -> Self:
        ctx = self._create()
        self._client = await ctx.__aenter__()
        self._exit = ctx.__aexit__
        return self

    async def close(self) -> None:
        if self._exit is not None:
            await self._exit(None, None, None)
            self._client = self._exit = None

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
