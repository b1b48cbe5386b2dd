"""``model.sfz``: weight-shared layers entropy coded, as in Deep Compression (Han et al., 2016).

A weight-shared layer is a codebook of at most ``2^bits`` float32 values and, per weight, the
index of its value or "zero" (a pruned weight). A bundle stores such layers here instead of in
``model.safetensors``. Each layer keeps the positions of its non-zero weights as the gaps between
them (relative indices), each gap at most ``2^gap_bits``: a longer gap is bridged by *filler*
entries (a gap of exactly ``2^gap_bits`` and the filler symbol, ``k``, in place of a cluster
index). The gaps and the cluster indices are two Huffman-coded streams
(:mod:`slimfuse.models.huffman`), their code lengths stored as nibbles; ``gap_bits`` is chosen
per layer (1..8) for the fewest bytes. A layer without zeros has a gap stream of zero bits.

Layout (little-endian)::

    b"SFZ\\x01"  u32 layers
    per layer:  u16 name bytes, name (UTF-8) | u8 ndim, u32 dims... | u8 bits | u16 k
                u8 gap_bits | u32 non-zeros | u32 entries | f32 codebook[k]
                nibbles: value code lengths[k + 1], gap code lengths[2^gap_bits]
                u16 lone value, u16 lone gap (the symbol of a stream whose alphabet has one)
                u32 value bytes, value stream | u32 gap bytes, gap stream

The file is decoded against what the model expects (:func:`decode`): the layers, their shapes,
``bits`` and codebook sizes come from the bundle's checked ``slimfuse.json`` and the rebuilt
model, never from the file alone; every count, length, code table and index is checked before
it is used, and no array is larger than the layer's own shape. Any mismatch is a ``ValueError``
of one line (the bundle reader raises its :class:`~slimfuse.errors.ModelError`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from slimfuse.models import huffman

MAGIC = b"SFZ\x01"
MAX_GAP_BITS = 8
MAX_NAME = 4096
MAX_NDIM = 8


@dataclass
class SharedTensor:
    """A weight-shared tensor: ``codes`` (int16, the weight's shape; -1 = zero) index
    ``codebook`` (float32, at most ``2^bits`` values)."""

    codes: np.ndarray
    codebook: np.ndarray
    bits: int

    def dense(self) -> np.ndarray:
        values = np.concatenate([np.zeros(1, np.float32), self.codebook.astype(np.float32)])
        return values[self.codes.astype(np.int64) + 1]


@dataclass
class Expected:
    """What the model says a stored layer must be."""

    shape: tuple[int, ...]
    k: int
    bits: int


def _nibbles(lengths: np.ndarray) -> bytes:
    v = np.asarray(lengths, dtype=np.uint8)
    if len(v) % 2:
        v = np.concatenate([v, np.zeros(1, np.uint8)])
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8).tobytes()


def _unnibble(raw: bytes, n: int) -> np.ndarray:
    b = np.frombuffer(raw, dtype=np.uint8)
    out = np.stack([b & 15, b >> 4], axis=1).reshape(-1)
    if len(out) > n and out[n:].any():
        raise ValueError("code-length padding is not zero")
    return out[:n].astype(np.int64)


def _entries(codes: np.ndarray, k: int, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gap symbols = gap - 1, value symbols; ``k`` = filler) of the flat ``codes``."""
    cap = 1 << gap_bits
    pos = np.flatnonzero(codes >= 0)
    gaps = np.diff(np.concatenate([[-1], pos]))
    fill = (gaps - 1) // cap
    per = fill + 1
    owner = np.repeat(np.arange(len(pos)), per)
    first = np.cumsum(per) - per
    within = np.arange(int(per.sum())) - first[owner]
    last = within == fill[owner]
    gap_sym = np.where(last, gaps[owner] - fill[owner] * cap - 1, cap - 1)
    val_sym = np.where(last, codes[pos][owner], k)
    return gap_sym.astype(np.int64), val_sym.astype(np.int64)


def _stream(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, int, bytes]:
    counts = np.bincount(symbols, minlength=alphabet)
    lengths = huffman.code_lengths(counts)
    used = np.flatnonzero(counts)
    lone = int(used[0]) if len(used) == 1 else 0
    return lengths, lone, huffman.encode(symbols, lengths)


def _layer_bytes(name: str, t: SharedTensor, gap_bits: int) -> bytes:
    codes = np.asarray(t.codes).reshape(-1)
    k = len(t.codebook)
    gap_sym, val_sym = _entries(codes, k, gap_bits)
    vlen, vlone, vdata = _stream(val_sym, k + 1)
    glen, glone, gdata = _stream(gap_sym, 1 << gap_bits)
    raw = name.encode("utf-8")
    shape = tuple(t.codes.shape)
    out = [
        struct.pack("<H", len(raw)),
        raw,
        struct.pack("<B", len(shape)),
        struct.pack(f"<{len(shape)}I", *shape),
        struct.pack("<BHBII", t.bits, k, gap_bits, int((codes >= 0).sum()), len(val_sym)),
        np.asarray(t.codebook, dtype="<f4").tobytes(),
        _nibbles(vlen),
        _nibbles(glen),
        struct.pack("<HH", vlone, glone),
        struct.pack("<I", len(vdata)),
        vdata,
        struct.pack("<I", len(gdata)),
        gdata,
    ]
    return b"".join(out)


def encode_layer(name: str, t: SharedTensor) -> bytes:
    """One layer's record, with the gap width (1..8 bits) that gives the fewest bytes."""
    codes = np.asarray(t.codes)
    if codes.dtype != np.int16 or codes.ndim < 1 or codes.ndim > MAX_NDIM:
        raise ValueError(f"{name}: codes must be int16 of 1 to {MAX_NDIM} dimensions")
    k = len(t.codebook)
    if not 1 <= k <= 1 << t.bits or not 2 <= t.bits <= 8:
        raise ValueError(f"{name}: {k} values for {t.bits} bits")
    if codes.size and (codes.min() < -1 or codes.max() >= k):
        raise ValueError(f"{name}: an index outside its codebook of {k}")
    if not np.isfinite(np.asarray(t.codebook, dtype=np.float32)).all():
        raise ValueError(f"{name}: the codebook holds NaN or Inf")
    best = min((_layer_bytes(name, t, g) for g in range(1, MAX_GAP_BITS + 1)), key=len)
    return best


def encode(layers: dict[str, SharedTensor]) -> bytes:
    """The ``.sfz`` bytes of ``layers`` (by state-dict prefix, i.e. module name)."""
    return (
        MAGIC
        + struct.pack("<I", len(layers))
        + b"".join(encode_layer(n, t) for n, t in layers.items())
    )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ValueError(
                f"truncated: {what} needs {n} bytes at offset {self.at}, "
                f"the file has {len(self.data)}"
            )
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def decode(data: bytes, expected: dict[str, Expected]) -> dict[str, SharedTensor]:
    """The layers of an ``.sfz`` file, each checked against ``expected`` (from the model):
    exactly those layers, their shapes, bits and codebook sizes."""
    r = _Reader(data)
    if r.take(len(MAGIC), "the magic number") != MAGIC:
        raise ValueError("not an .sfz file (bad magic number)")
    (n,) = r.unpack("<I", "the layer count")
    if n != len(expected):
        raise ValueError(f"{n} layers in the file, the model has {len(expected)} shared layers")
    out: dict[str, SharedTensor] = {}
    for _ in range(n):
        name, t = _decode_layer(r, expected)
        if name in out:
            raise ValueError(f"layer {name!r} stored twice")
        out[name] = t
    if r.at != len(data):
        raise ValueError(f"{len(data) - r.at} trailing bytes after the last layer")
    return out


def _decode_layer(r: _Reader, expected: dict[str, Expected]) -> tuple[str, SharedTensor]:
    (name_len,) = r.unpack("<H", "a layer name's length")
    if name_len > MAX_NAME:
        raise ValueError(f"a layer name of {name_len} bytes")
    try:
        name = r.take(name_len, "a layer name").decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("a layer name is not UTF-8") from None
    want = expected.get(name)
    if want is None:
        raise ValueError(f"layer {name[:80]!r} is not a shared layer of the model")
    (ndim,) = r.unpack("<B", f"{name}: ndim")
    if ndim != len(want.shape):
        raise ValueError(f"{name}: {ndim} dimensions, the model has {len(want.shape)}")
    shape = r.unpack(f"<{ndim}I", f"{name}: shape")
    if tuple(shape) != tuple(want.shape):
        raise ValueError(f"{name}: shape {list(shape)}, the model has {list(want.shape)}")
    bits, k, gap_bits, nnz, entries = r.unpack("<BHBII", f"{name}: counts")
    numel = int(np.prod(shape))
    if bits != want.bits or k != want.k:
        raise ValueError(
            f"{name}: {k} values of {bits} bits, the model has {want.k} of {want.bits}"
        )
    if not 1 <= gap_bits <= MAX_GAP_BITS:
        raise ValueError(f"{name}: gap width {gap_bits} bits (expected 1..{MAX_GAP_BITS})")
    if nnz > numel or entries > numel or nnz > entries:
        raise ValueError(f"{name}: {nnz} non-zeros in {entries} entries for {numel} weights")
    codebook = np.frombuffer(r.take(4 * k, f"{name}: codebook"), dtype="<f4").astype(np.float32)
    if not np.isfinite(codebook).all():
        raise ValueError(f"{name}: the codebook holds NaN or Inf")
    cap = 1 << gap_bits
    vlen = _unnibble(r.take((k + 2) // 2, f"{name}: value code lengths"), k + 1)
    glen = _unnibble(r.take((cap + 1) // 2, f"{name}: gap code lengths"), cap)
    vlone, glone = r.unpack("<HH", f"{name}: lone symbols")
    (vbytes,) = r.unpack("<I", f"{name}: value stream length")
    vdata = r.take(vbytes, f"{name}: value stream")
    (gbytes,) = r.unpack("<I", f"{name}: gap stream length")
    gdata = r.take(gbytes, f"{name}: gap stream")
    try:
        vals = huffman.decode(vdata, vlen, entries, vlone)
        gaps = huffman.decode(gdata, glen, entries, glone) + 1
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if entries and int(vals.max()) > k:
        raise ValueError(f"{name}: a cluster index above the codebook's {k}")
    pos = np.cumsum(gaps) - 1
    if entries and int(pos[-1]) >= numel:
        raise ValueError(f"{name}: an index past the layer's {numel} weights")
    filler = vals == k
    if (gaps[filler] != cap).any():
        raise ValueError(f"{name}: a filler entry whose gap is not {cap}")
    if int((~filler).sum()) != nnz:
        raise ValueError(f"{name}: {int((~filler).sum())} non-zeros, the header says {nnz}")
    codes = np.full(numel, -1, dtype=np.int16)
    codes[pos[~filler]] = vals[~filler]
    return name, SharedTensor(codes.reshape(shape), codebook, bits)
