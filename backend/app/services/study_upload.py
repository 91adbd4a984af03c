"""A study upload -> a list of ``SliceFile`` (``ml_model.inference.study``): many files, or
one zip read in memory.

Ordering, series checks, scoring and aggregation are ``ml_model.inference.study``'s; this module
only unpacks and polices the upload:

* a zip is read with :mod:`zipfile` from memory (the uploaded part itself, not a copy),
  never extracted to disk; its unpacked members are held in the request's memory budget
  (``services/admission.py``) before any is inflated: 413 over ``MAX_REQUEST_MEMORY_MB``;
* a member with path traversal (``..``), an absolute path, a drive letter or a NUL,
  a symlink, or encryption refuses the whole upload (400);
* more than ``MAX_ZIP_MEMBERS`` entries, more than ``MAX_ZIP_UNCOMPRESSED_MB`` declared
  by all members *or actually read*, a member over 64 KiB with more than ``MAX_ZIP_RATIO``
  compression ratio, or a member that inflates past its declared size refuses it too (413);
* folders are fine (a member is named by its base name), ``__MACOSX``, hidden files and
  ``DICOMDIR`` are skipped;
* a file that is neither DICOM nor a raster image, or an empty one, a PNG/JPEG whose name
  holds a number of more than 18 digits (its slice number), or a deflated DICOM that would
  inflate past the budget (ordering would parse it) becomes an entry in ``errors`` rather
  than breaking the series.
"""

from __future__ import annotations

import io
import re
import stat
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import BinaryIO

from fastapi import UploadFile

from backend.app.core.config import Settings
from backend.app.services.admission import precheck_slice, reserve
from backend.app.services.imaging import UploadProblem
from ml_model.imaging.dicom import is_dicom
from ml_model.imaging.errors import short_message as _short
from ml_model.imaging.formats import sniff
from ml_model.inference.study import SliceFile

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
SKIPPED_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini"})
READ_CHUNK = 1024 * 1024
# Members above this size are held to MAX_ZIP_RATIO (a slice never compresses 200:1; a
# megabyte of zeros does, and a thousand of them used to unpack to a gigabyte).
RATIO_FLOOR = 64 * 1024
MAX_NAME_DIGITS = 18
_DIGITS = re.compile(r"\d+")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class StudyUpload:
    slices: list[SliceFile] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


def is_zip(data: bytes) -> bool:
    return data[:4] in ZIP_MAGIC


def looks_like_slice(data: bytes) -> bool:
    """The file carries the signature of an accepted input format (``formats.FORMATS``)."""
    return sniff(data) is not None


def _unsafe(name: str) -> str | None:
    """Why a member name is unsafe to even consider, or None."""
    if "\x00" in name:
        return "a NUL byte in the name"
    normal = name.replace("\\", "/")
    if normal.startswith("/") or _DRIVE.match(normal):
        return "an absolute path"
    if ".." in normal.split("/"):
        return "path traversal (..)"
    return None


def _skipped(name: str) -> bool:
    """Folders' metadata, hidden files, DICOMDIR: not slices."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]
    if not parts:
        return True
    if any(part == "__MACOSX" or part.startswith(".") for part in parts):
        return True
    return parts[-1].lower() in SKIPPED_NAMES


def _basename(name: str) -> str:
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _shown(name: str) -> str:
    """A member name safe to echo in an error detail."""
    return repr(name[:200])


def read_zip(data: bytes | BinaryIO, settings: Settings) -> StudyUpload:
    """Unpack a study zip in memory under the limits above (``data``: the zip's bytes, or
    the uploaded part itself, read in place without a copy)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
        members = archive.infolist()
    except Exception as exc:  # zipfile raises many types on damaged archives
        raise UploadProblem(400, f"the zip archive could not be read: {_short(exc)}") from exc
    if len(members) > settings.max_zip_members:
        raise UploadProblem(
            413,
            f"the zip has {len(members)} entries; at most {settings.max_zip_members} are accepted",
        )
    wanted = _wanted_members(members)
    _check_declared_sizes(members, wanted, settings)

    # The unpacked members stay in memory until the study is scored: held in the request's
    # memory budget before any is inflated (413 over MAX_REQUEST_MEMORY_MB, 503 when busy).
    unpacked = sum(info.file_size for info in wanted if info.file_size <= settings.max_upload_bytes)
    reserve(unpacked, f"unpacking the zip ({len(wanted)} files, {unpacked / 2**20:,.0f} MiB)")
    names = Counter(_basename(info.filename) for info in wanted)
    upload = StudyUpload()
    inflated = _Inflated(settings.max_zip_uncompressed_bytes, settings.max_zip_uncompressed_mb)
    for info in wanted:
        name = _basename(info.filename)
        if names[name] > 1:  # the same base name in two folders: keep them apart
            name = info.filename.replace("\\", "/")
        if info.file_size > settings.max_upload_bytes:
            upload.errors.append(
                (name, f"larger than the limit of {settings.max_upload_mb:g} MiB per file")
            )
            continue
        try:
            member = inflated.read(archive, info)
        except UploadProblem:
            raise
        except Exception as exc:  # bad CRC, bad zlib/bz2/lzma data, unsupported method...
            upload.errors.append((name, f"the zip member could not be read: {_short(exc)}"))
            continue
        _add(upload, name, member)
    return upload


def _wanted_members(members: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The members that may be slices; an unsafe name, a symlink or an encrypted member
    refuses the whole zip (400)."""
    wanted: list[zipfile.ZipInfo] = []
    for info in members:
        problem = _unsafe(info.filename)
        if problem:
            raise UploadProblem(400, f"zip member {_shown(info.filename)} refused: {problem}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UploadProblem(400, f"zip member {_shown(info.filename)} refused: a symlink")
        if info.is_dir() or _skipped(info.filename):
            continue
        if info.flag_bits & 0x1:
            raise UploadProblem(400, f"zip member {_shown(info.filename)} is encrypted")
        wanted.append(info)
    return wanted


def _check_declared_sizes(
    members: list[zipfile.ZipInfo], wanted: list[zipfile.ZipInfo], settings: Settings
) -> None:
    """413 before anything is inflated: the sizes all members declare over the budget, a
    wanted member's compression ratio over the limit, or more files than a study's."""
    limit_mb = f"{settings.max_zip_uncompressed_mb:g} MiB"
    # Every member's declared size counts, read or not, small or large.
    declared = sum(info.file_size for info in members)
    if declared > settings.max_zip_uncompressed_bytes:
        raise UploadProblem(413, f"the zip unpacks to {declared:,} bytes, over the {limit_mb}")
    for info in wanted:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR and ratio > settings.max_zip_ratio:
            raise UploadProblem(
                413,
                f"zip member {_shown(info.filename)} has a compression ratio of {ratio:.0f}:1, "
                f"over the limit of {settings.max_zip_ratio:g}:1",
            )
    if len(wanted) > settings.max_study_files:
        raise UploadProblem(
            413,
            f"the zip holds {len(wanted)} files; at most {settings.max_study_files} slices "
            "per study",
        )


@dataclass
class _Inflated:
    """The bytes actually inflated from a zip's members so far, held to its budget (a
    member's declared size may lie)."""

    budget: int
    budget_mb: float
    total: int = 0

    def read(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
        """One member, chunk by chunk: 413 once it inflates past its declared size or all
        members together past the budget."""
        chunks: list[bytes] = []
        read = 0
        with archive.open(info) as member:
            while chunk := member.read(READ_CHUNK):
                read += len(chunk)
                self.total += len(chunk)
                if read > info.file_size:
                    raise UploadProblem(
                        413,
                        f"zip member {_shown(info.filename)} inflates past its declared size",
                    )
                if self.total > self.budget:
                    raise UploadProblem(413, f"the zip unpacks to more than {self.budget_mb:g} MiB")
                chunks.append(chunk)
        return b"".join(chunks)


def _add(upload: StudyUpload, name: str, data: bytes) -> None:
    if not data:
        upload.errors.append((name, "the file is empty"))
    elif not looks_like_slice(data):
        upload.errors.append((name, "the file is not a recognised image or DICOM"))
    elif not is_dicom(data) and (digits := _longest_number(name)) > MAX_NAME_DIGITS:
        # PNG/JPEG slices are ordered by the number in their name; a number of thousands of
        # digits is no slice number (int() refuses it past 4,300 digits, float() past 308).
        upload.errors.append(
            (
                _shown_name(name),
                f"the file name holds a {digits}-digit number; slice numbers "
                f"have at most {MAX_NAME_DIGITS} digits",
            )
        )
    elif (problem := precheck_slice(data)) is not None:
        upload.errors.append((name, problem))
    else:
        upload.slices.append(SliceFile(name, data))


def _longest_number(name: str) -> int:
    return max((len(run) for run in _DIGITS.findall(name)), default=0)


def _shown_name(name: str) -> str:
    return name if len(name) <= 200 else name[:197] + "..."


def collect_uploads(files: list[UploadFile], settings: Settings) -> StudyUpload:
    """The uploaded parts of a study request -> :func:`collect_study`. Each part's bytes are
    taken out of the upload buffer and the buffer freed at once (a body is never held
    twice); a single zip is read in place, without a copy at all."""
    if len(files) == 1 and is_zip(files[0].file.read(4)):
        stream = files[0].file
        stream.seek(0, io.SEEK_END)
        if stream.tell() > settings.max_study_bytes:
            raise UploadProblem(
                413, f"the study upload is larger than the limit of {settings.max_study_mb:g} MiB"
            )
        stream.seek(0)
        return read_zip(stream, settings)
    single = len(files) == 1
    limit = settings.max_study_bytes if single else settings.max_upload_bytes
    uploads = []
    for index, upload in enumerate(files):
        upload.file.seek(0)
        data = upload.file.read(limit + 1)
        upload.file.close()  # the parser's copy: freed now, not at the end of the request
        if single and len(data) > limit:
            raise UploadProblem(
                413, f"the study upload is larger than the limit of {settings.max_study_mb:g} MiB"
            )
        uploads.append((upload.filename or f"file{index + 1}", data))
    return collect_study(uploads, settings)


def collect_study(uploads: list[tuple[str, bytes]], settings: Settings) -> StudyUpload:
    """Many uploaded files (each at most MAX_UPLOAD_MB), or one zip of them."""
    if len(uploads) == 1 and is_zip(uploads[0][1]):
        return read_zip(uploads[0][1], settings)
    if len(uploads) > 1 and any(is_zip(data) for _, data in uploads):
        raise UploadProblem(400, "send either slice files or one zip, not a zip among files")
    if len(uploads) > settings.max_study_files:
        raise UploadProblem(
            413,
            f"{len(uploads)} files sent; at most {settings.max_study_files} slices per study",
        )
    names = Counter(name for name, _ in uploads)
    upload = StudyUpload()
    for index, (name, data) in enumerate(uploads):
        if not name or names[name] > 1:
            name = f"{index + 1}/{name or 'unnamed'}"
        if len(data) > settings.max_upload_bytes:
            upload.errors.append(
                (name, f"larger than the limit of {settings.max_upload_mb:g} MiB per file")
            )
            continue
        _add(upload, name, data)
    return upload
