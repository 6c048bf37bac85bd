"""Both image stores, one interface: publish, list, read, remove; S3 against a real server."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from imagesvc.settings import Settings
from tests.support.s3_server import S3Server
from workers import image_store
from workers.checksum import ALGORITHMS, checksum_file, checksum_stream
from workers.image_store import FileImageStore, ImageStore, S3ImageStore, StoreError, open_store

MiB = 1 << 20


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    if request.param == "file":
        (tmp_path / "store").mkdir()
        return open_store((tmp_path / "store").as_uri(), tmp_path)
    request.getfixturevalue("s3_env")
    return open_store(f"s3://{request.getfixturevalue('bucket')}/{tmp_path.name}", tmp_path)


def staged_file(store: ImageStore, size: int) -> tuple[Path, bytes]:
    staging = store.staging_dir()
    staging.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path = staging / f"job-{len(data)}.1.part"
    path.write_bytes(data)
    return path, data


def test_a_published_copy_is_listed_read_back_whole_and_removed(store: ImageStore) -> None:
    staged, data = staged_file(store, 3 * MiB + 17)
    sent: list[int] = []
    store.publish(staged, "img-a.1.qcow2", on_progress=sent.append)
    assert not staged.exists()
    assert [o.name for o in store.listing()] == ["img-a.1.qcow2"]
    with store.reader("img-a.1.qcow2") as stream:
        assert stream.read() == data
    assert sent and sent[-1] == len(data)
    store.remove("img-a.1.qcow2")
    store.remove("img-a.1.qcow2")  # already gone: no error
    assert list(store.listing()) == []


def test_s3_uploads_in_parts(
    s3_env: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_store, "PART_SIZE", 5 * MiB)  # S3's smallest part
    store = S3ImageStore(bucket, tmp_path.name, tmp_path / "staging")
    staged, data = staged_file(store, 12 * MiB)
    sent: list[int] = []
    store.publish(staged, "img-b.1.qcow2", on_progress=sent.append)
    assert sent == [5 * MiB, 10 * MiB, 12 * MiB]
    with store.reader("img-b.1.qcow2") as stream:
        assert stream.read() == data


def test_an_s3_restart_mid_upload_loses_nothing_and_leaves_nothing_half_written(
    s3_env: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_store, "PART_SIZE", 5 * MiB)
    store = S3ImageStore(bucket, tmp_path.name, tmp_path / "staging")
    staged, data = staged_file(store, 12 * MiB)
    restarted: list[int] = []

    def restart_after_first_part(sent: int) -> None:
        if not restarted:
            restarted.append(sent)
            s3_env.restart()  # in-flight multipart state is gone with the old process

    store.publish(staged, "img-c.1.qcow2", on_progress=restart_after_first_part)
    assert restarted == [5 * MiB]
    with store.reader("img-c.1.qcow2") as stream:
        assert stream.read() == data
    assert [o.name for o in store.listing()] == ["img-c.1.qcow2"]
    assert store.remove_stale_uploads(older_than=0) == []


def test_an_unfinished_upload_is_aborted_by_the_sweep(
    s3_env: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = S3ImageStore(bucket, tmp_path.name, tmp_path / "staging")
    key = f"{tmp_path.name}/img-d.1.qcow2"
    store.client.create_multipart_upload(Bucket=bucket, Key=key)  # a run that crashed
    assert store.remove_stale_uploads(older_than=3600) == []
    assert store.remove_stale_uploads(older_than=0) == ["img-d.1.qcow2"]
    assert store.remove_stale_uploads(older_than=0) == []
    assert list(store.listing()) == []


def test_a_store_that_stays_down_fails_the_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_store, "UPLOAD_TRIES", 1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = S3ImageStore("images", "p", tmp_path / "staging")
    staged, _ = staged_file(store, 1024)
    with pytest.raises(StoreError, match=r"upload of img-e\.1\.raw"):
        store.publish(staged, "img-e.1.raw")
    assert staged.exists()  # kept for the retry that comes with the job's next run


def test_store_urls() -> None:
    assert open_store("", Path("/data")).url == Path("/data/images").resolve().as_uri()
    assert open_store("s3://bucket/some/prefix", Path("/d")).url == "s3://bucket/some/prefix"
    with pytest.raises(ValueError, match="IMAGESVC_STORE_URL"):
        open_store("ftp://x/y", Path("/d"))


def test_the_settings_store_url_names_the_store_every_part_builds() -> None:
    default = Settings(data_dir=Path("/data"))
    assert open_store(default.store_url, default.data_dir).url == Path("/data/images").as_uri()
    shared = Settings(data_dir=Path("/data"), store_url="file:///mnt/shared/images")
    assert shared.image_dir == Path("/mnt/shared/images")
    assert isinstance(open_store(shared.store_url, shared.data_dir), FileImageStore)
    bucket = Settings(data_dir=Path("/data"), store_url="s3://bucket/imagesvc")
    s3 = open_store(bucket.store_url, bucket.data_dir)
    assert isinstance(s3, S3ImageStore) and s3.staging_dir() == Path("/data/staging")
    with pytest.raises(ValidationError, match="store_url"):
        Settings(store_url="ftp://host/images")


class ShortReads(io.BytesIO):
    """A network body: each read returns at most 1 MiB, whatever was asked."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read(MiB if size is None or size < 0 else min(size, MiB))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_streamed_object_checksums_as_its_file_does(tmp_path: Path, algorithm: str) -> None:
    path = tmp_path / "disk.raw"
    with open(path, "wb") as disk:  # data, a hole of whole chunks, data; an odd length
        disk.write(os.urandom(5 * MiB))
        disk.seek(13 * MiB)
        disk.write(os.urandom(MiB + 3))
    streamed = checksum_stream(ShortReads(path.read_bytes()), algorithm)
    assert streamed == checksum_file(path, algorithm)
