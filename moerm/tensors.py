"""numpy arrays <-> ``moerm.v1.Tensor`` (float32, row-major, little-endian)."""

from __future__ import annotations

import math

import numpy as np

from moerm.errors import InvalidArgument
from moerm.v1 import tensor_pb2

_F32 = np.dtype("<f4")
MAX_DIMS = 8  # no moerm tensor has more axes
MAX_DIM = 2**31 - 1  # nor a longer one (numpy cannot even shape an empty array of 2**61 rows)


def to_proto(array: np.ndarray) -> tensor_pb2.Tensor:
    array = np.ascontiguousarray(array, dtype=_F32)
    return tensor_pb2.Tensor(shape=list(array.shape), data=array.tobytes())


def from_proto(tensor: tensor_pb2.Tensor, field: str = "tensor") -> np.ndarray:
    if len(tensor.shape) > MAX_DIMS:
        raise InvalidArgument.field(field, f"{len(tensor.shape)} dimensions (at most {MAX_DIMS})")
    shape = tuple(int(n) for n in tensor.shape)
    if any(n < 0 or n > MAX_DIM for n in shape):
        raise InvalidArgument.field(field, f"shape {shape}: each dimension must be in [0, {MAX_DIM}]")
    expected = math.prod(shape) * 4  # Python integers: a huge shape cannot overflow
    if len(tensor.data) != expected:
        raise InvalidArgument.field(field, f"{len(tensor.data)} bytes do not fit shape {shape} of float32")
    return np.frombuffer(tensor.data, dtype=_F32).reshape(shape)
