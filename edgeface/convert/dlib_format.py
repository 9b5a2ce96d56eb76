"""Readers for dlib's binary serialization format (dlib/serialize.h), pure Python + numpy.

- integers: one control byte (low nibble = number of following little-endian magnitude bytes,
  bit 0x80 = negative), then the bytes;
- bool: the ASCII character '1' or '0';
- string: integer length, then the raw bytes;
- float/double: mantissa (integer) then exponent (integer), value = mantissa * 2**exponent, except
  the exponents 32000/32001/32002 (float_details::is_inf/is_ninf/is_nan);
- tensor: integer version (2), then n, k, nr, nc, then n*k*nr*nc little-endian float32;
- matrix<float/double> (any size, also matrix<float,0,1>): -nr, -nc, then the elements row-major,
  each a scalar float. Files from dlib before 2012 store +nc, +nr instead (same elements); dlib
  still reads both, and so does `read_float_matrix`;
- std::vector<T>: integer length, then each element;
- dlib::vector<T,2> (a point): x then y, each a scalar.
"""

from __future__ import annotations

import math

import numpy as np

from edgeface.errors import ModelFileError

# dlib's float_details marks non-finite values with these exponents (dlib/float_details.h).
_EXP_INF = 32000
_EXP_NINF = 32001
_EXP_NAN = 32002


class DlibReader:
    """A cursor over the bytes of one dlib file. Every read raises ModelFileError on truncation."""

    def __init__(self, data: bytes, name: str = "dlib file") -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def _take(self, count: int) -> bytes:
        if count < 0 or self.pos + count > len(self.data):
            raise ModelFileError(f"{self.name} is truncated or corrupted (needed {count} bytes at offset {self.pos})")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def read_int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise ModelFileError(f"{self.name} is corrupted: bad integer control byte {control:#x} at offset {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if control & 0x80 else value

    def read_bool(self) -> bool:
        char = self._take(1)
        if char not in (b"0", b"1"):
            raise ModelFileError(f"{self.name} is corrupted: bad bool byte {char!r} at offset {self.pos - 1}")
        return char == b"1"

    def read_string(self) -> str:
        length = self.read_int()
        return self._take(length).decode("utf-8", errors="replace")

    def read_float(self) -> float:
        mantissa = self.read_int()
        exponent = self.read_int()
        if exponent == _EXP_INF:
            return float("inf")
        if exponent == _EXP_NINF:
            return float("-inf")
        if exponent == _EXP_NAN:
            return float("nan")
        try:
            return math.ldexp(float(mantissa), exponent)
        except OverflowError:
            raise ModelFileError(f"{self.name} is corrupted: float exponent {exponent} out of range at offset {self.pos}") from None

    def read_tensor(self) -> np.ndarray:
        version = self.read_int()
        if version != 2:
            raise ModelFileError(f"{self.name} is corrupted: tensor version {version} at offset {self.pos}, expected 2")
        start = self.pos
        shape = tuple(self.read_int() for _ in range(4))
        if any(d < 0 for d in shape):
            raise ModelFileError(f"{self.name} is corrupted: negative tensor shape {shape} at offset {start}")
        count = math.prod(shape)  # exact: np.prod wraps around in int64 for corrupted shapes
        values = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        return values.reshape(shape)

    def read_float_matrix(self) -> np.ndarray:
        """A dlib::matrix<float|double> (dynamic or fixed size) as a float64 (nr, nc) array."""
        start = self.pos
        rows = self.read_int()
        cols = self.read_int()
        if rows < 0 or cols < 0:
            rows, cols = -rows, -cols
        else:
            rows, cols = cols, rows  # dlib's old format: nc first, both positive
        if rows < 0 or cols < 0:
            raise ModelFileError(f"{self.name} is corrupted: bad matrix shape at offset {start}")
        if 2 * rows * cols > len(self.data) - self.pos:  # every scalar float takes at least 2 bytes
            raise ModelFileError(
                f"{self.name} is truncated or corrupted: {rows}x{cols} matrix at offset {start} "
                f"does not fit in the remaining {len(self.data) - self.pos} bytes"
            )
        values = [self.read_float() for _ in range(rows * cols)]
        return np.asarray(values, dtype=np.float64).reshape(rows, cols)

    def read_float_column(self) -> np.ndarray:
        """A dlib::matrix<float,0,1> (column vector) as a 1-D float64 array."""
        start = self.pos
        matrix = self.read_float_matrix()
        if matrix.shape[1] != 1 and matrix.size:
            raise ModelFileError(f"{self.name} is corrupted: expected a column vector at offset {start}, got {matrix.shape}")
        return matrix.reshape(-1)

    def read_length(self, limit: int) -> int:
        """The length of a std::vector (or string); refuses negative or implausible lengths."""
        start = self.pos
        length = self.read_int()
        if length < 0 or length > limit:
            raise ModelFileError(f"{self.name} is corrupted: bad length {length} at offset {start}")
        return length

    def read_point2(self) -> tuple[float, float]:
        """A dlib::vector<float|double,2>: x then y."""
        return self.read_float(), self.read_float()
