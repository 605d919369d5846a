"""Assets in an S3-compatible bucket (AWS S3, MinIO, R2, ...) through boto3.

boto3 blocks, so every call runs in a worker thread (anyio.to_thread). A put streams: parts of
PART_SIZE go up as a multipart upload while sha256 and size are computed; an object smaller
than one part is a single PutObject. A failed multipart upload is aborted, so no part lingers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from toolcallstore.errors import ConfigError
from toolcallstore.settings import Settings
from toolcallstore.storage.base import StoredObject
from toolcallstore.storage.keys import ObjectDigest, check_key

PART_SIZE = 8 * 1024 * 1024  # S3's minimum part is 5 MiB (except the last)
READ_CHUNK = 256 * 1024
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


class S3Storage:
    name = "s3"

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        if not settings.s3_bucket:
            raise ConfigError("TOOLCALLSTORE_STORAGE=s3 needs TOOLCALLSTORE_S3_BUCKET")
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url or None,
            region_name=settings.s3_region or None,
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=settings.s3_secret_access_key or None,
            config=Config(retries={"max_attempts": 3, "mode": "standard"},
                          max_pool_connections=32),
        )  # fmt: skip
        return cls(client, settings.s3_bucket, settings.s3_prefix)

    def object_name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def local_path(self, key: str) -> Path | None:
        return None

    async def put(self, key: str, chunks: AsyncIterator[bytes], content_type: str) -> StoredObject:
        name = self.object_name(key)
        digest = ObjectDigest(content_type)
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                digest.update(chunk)
                buffer += chunk
                while len(buffer) >= PART_SIZE:
                    if upload_id is None:
                        upload_id = await self._start_upload(name, content_type)
                    part, buffer = bytes(buffer[:PART_SIZE]), buffer[PART_SIZE:]
                    parts.append(await self._upload_part(name, upload_id, len(parts) + 1, part))
            if upload_id is None:
                await self._call("put_object", Bucket=self.bucket, Key=name, Body=bytes(buffer),
                                 ContentType=digest.content_type,
                                 Metadata={"sha256": digest.sha256.hexdigest()})  # fmt: skip
            else:
                if buffer:
                    parts.append(
                        await self._upload_part(name, upload_id, len(parts) + 1, bytes(buffer))
                    )
                await self._call("complete_multipart_upload", Bucket=self.bucket, Key=name,
                                 UploadId=upload_id, MultipartUpload={"Parts": parts})  # fmt: skip
        except BaseException:
            if upload_id is not None:
                with anyio.CancelScope(shield=True):
                    await self._abort(name, upload_id)
            raise
        return digest.stored(key)

    async def _start_upload(self, name: str, content_type: str) -> str:
        # The sniffed type is known only from the first bytes; the row keeps the right one,
        # and the app serves S3 objects itself with the row's type.
        answer = await self._call("create_multipart_upload", Bucket=self.bucket, Key=name,
                                  ContentType=content_type)  # fmt: skip
        upload_id: str = answer["UploadId"]
        return upload_id

    async def _upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> Any:
        answer = await self._call("upload_part", Bucket=self.bucket, Key=name,
                                  UploadId=upload_id, PartNumber=number, Body=data)  # fmt: skip
        return {"ETag": answer["ETag"], "PartNumber": number}

    async def _abort(self, name: str, upload_id: str) -> None:
        try:
            await self._call("abort_multipart_upload", Bucket=self.bucket, Key=name,
                             UploadId=upload_id)  # fmt: skip
        except ClientError:
            pass  # the bucket's lifecycle rule for incomplete uploads is the backstop

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        name = self.object_name(key)
        wanted = f"bytes={start}-{'' if end is None else end}"
        try:
            answer = await self._call("get_object", Bucket=self.bucket, Key=name, Range=wanted)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING:
                raise KeyError(key) from None
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return  # an empty object, or a start past its end
            raise
        body = answer["Body"]
        try:
            while chunk := await anyio.to_thread.run_sync(body.read, READ_CHUNK):
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(body.close)

    async def delete(self, key: str) -> None:
        await self._call("delete_object", Bucket=self.bucket, Key=self.object_name(key))

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        method = getattr(self.client, operation)
        return await anyio.to_thread.run_sync(lambda: method(**kwargs))
