"""Readers for dlib's binary serialization format (dlib/serialize.h), pure Python + numpy.

- integers: one control byte (low nibble = number of following little-endian magnitude bytes,
  bit 0x80 = negative), then the bytes;
- bool: the ASCII character '1' or '0';
- string: integer length, then the raw bytes;
- float/double: mantissa (integer) then exponent (integer), value = mantissa * 2**exponent;
- tensor: integer version (2), then n, k, nr, nc, then n*k*nr*nc little-endian float32;
- matrix<float/double>: nr, nc (stored negated), then each element as a scalar float.
"""

from __future__ import annotations

import numpy as np

from edgeface.errors import ModelFileError

# dlib's float_details marks non-finite values with these exponents.
_EXP_INF = 32767
_EXP_NINF = 32766
_EXP_NAN = 32765


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
        return float(mantissa) * 2.0**exponent

    def read_tensor(self) -> np.ndarray:
        version = self.read_int()
        if version != 2:
            raise ModelFileError(f"{self.name} is corrupted: tensor version {version} at offset {self.pos}, expected 2")
        shape = tuple(self.read_int() for _ in range(4))
        if any(d < 0 for d in shape):
            raise ModelFileError(f"{self.name} is corrupted: negative tensor shape {shape}")
        count = int(np.prod(shape))
        values = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        return values.reshape(shape)

    def read_float_matrix(self) -> np.ndarray:
        """A dlib::matrix<float|double> of dynamic size: -nr, -nc, then row-major scalar floats."""
        rows = -self.read_int()
        cols = -self.read_int()
        if rows < 0 or cols < 0:
            raise ModelFileError(f"{self.name} is corrupted: bad matrix shape {rows}x{cols}")
        values = [self.read_float() for _ in range(rows * cols)]
        return np.asarray(values, dtype=np.float64).reshape(rows, cols)
