"""A reader that hashes a stream on its way to S3 and refuses to end it unless it is intact.

Pure: no Dagster and no S3 client here. audio_assets/transfer.py hands a VerifyingReader
over an SFTP file to ObjectStore.upload_stream; because the reader raises before the last
byte when the byte count or SHA-256 is wrong, the multipart upload is aborted and a bad copy
never becomes an object. part_size_for picks the part size the reader and the uploader share.
"""

import hashlib
import math
from typing import IO

MIB = 1024 * 1024
S3_MAX_PARTS = 10_000
S3_MIN_PART = 5 * MIB  # every part but the last
S3_MAX_PART = 5 * 1024 * MIB
_SOURCE_READ = 256 * 1024


class TransferVerificationError(RuntimeError):
    """The bytes read or stored are not the remote file's; a retry reads them again."""


def part_size_for(size: int, configured: int) -> int:
    """The configured part size, raised (in whole MiB) so the file fits in S3's 10,000 parts."""
    needed = math.ceil(size / S3_MAX_PARTS / MIB) * MIB
    return min(max(configured, needed, S3_MIN_PART), S3_MAX_PART)


class VerifyingReader:
    """A forward-only file object over `source` that hashes what passes through it.

    It refuses to hand over the end of the stream (raises TransferVerificationError) when
    the byte count or SHA-256 differ from what is expected: the uploader then aborts
    before CompleteMultipartUpload, so a bad copy never becomes an object. Not seekable on
    purpose: s3transfer then reads it once, in order, from one thread.
    """

    def __init__(
        self,
        source: IO[bytes],
        *,
        expected_size: int,
        expected_sha256: str,
        part_size: int,
        multipart_threshold: int,
    ):
        self.source = source
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.part_size = part_size
        self.multipart = expected_size >= multipart_threshold  # s3transfer's own rule
        self.bytes_read = 0
        self._sha256 = hashlib.sha256()
        self._part_md5s: list[bytes] = []
        self._part = hashlib.md5()
        self._part_fill = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1) -> bytes:
        data = self._read_fully(size)
        self._account(data)
        if self.bytes_read > self.expected_size:
            raise TransferVerificationError(
                f"remote file grew while it was read: {self.bytes_read} bytes, expected {self.expected_size}"
            )
        at_eof = not data and size != 0
        if self.bytes_read == self.expected_size or at_eof:
            self._verify()
        return data

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def expected_etag(self) -> str:
        """The ETag S3 computes for these bytes: MD5 of a single PUT, or MD5 of the parts'
        MD5s plus "-N" for a multipart upload."""
        digests = self._part_md5s + ([self._part.digest()] if self._part_fill else [])
        if not self.multipart:
            return digests[0].hex() if digests else hashlib.md5().hexdigest()
        return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"

    def _read_fully(self, size: int) -> bytes:
        if size is None or size < 0:
            return self.source.read()
        # Loop: a short read would end a part early, and S3 refuses parts under 5 MiB but
        # the last. Small reads: paramiko grows one bytes object per read(), which is
        # quadratic (a 16 MiB read ran at 15 MB/s, 256 KiB reads at over 100).
        chunks, wanted = [], size
        while wanted > 0:
            chunk = self.source.read(min(wanted, _SOURCE_READ))
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
        return b"".join(chunks)

    def _account(self, data: bytes) -> None:
        self.bytes_read += len(data)
        self._sha256.update(data)
        view = memoryview(data)
        while view:
            take = min(len(view), self.part_size - self._part_fill)
            self._part.update(view[:take])
            self._part_fill += take
            view = view[take:]
            if self._part_fill == self.part_size:
                self._part_md5s.append(self._part.digest())
                self._part, self._part_fill = hashlib.md5(), 0

    def _verify(self) -> None:
        if self._verified:
            return
        if self.bytes_read != self.expected_size:
            raise TransferVerificationError(f"remote file ended after {self.bytes_read} of {self.expected_size} bytes")
        if self.sha256 != self.expected_sha256:
            raise TransferVerificationError(
                f"SHA-256 of the bytes read {self.sha256} differs from the remote file's {self.expected_sha256}"
            )
        self._verified = True
