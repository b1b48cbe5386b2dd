"""Canonical Huffman coding of small alphabets with numpy, for the compressed bundle (``.sfz``).

A code is described by its code lengths only (one per symbol, 0 = unused; at most
:data:`MAX_LEN` bits), so a file stores the lengths and both sides rebuild the same canonical
codes: codes are assigned in order of (length, symbol). An alphabet of which one symbol is used
gets a code of zero bits: the stream is empty and the count says how many symbols it holds.

Encoding and decoding are vectorised: decoding looks up every bit position's code in a table of
``2^L`` entries (``L`` the longest code) and then follows the chain of code starts from bit 0 by
pointer doubling (``log2(count)`` passes over the stream), instead of a loop per symbol in
Python. Everything a decoder reads is checked: the lengths must form a prefix code (Kraft), the
stream must hold exactly ``count`` codes, every position must start a valid code, and no bytes
may trail. Errors are :class:`ValueError` with one line; the bundle reader turns them into
its own.
"""

from __future__ import annotations

import heapq

import numpy as np

MAX_LEN = 15  # code lengths fit in a nibble


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code lengths (``uint8``, 0 for symbols that never occur) for ``counts``, limited
    to ``max_len`` bits (counts are halved and the tree rebuilt until it fits)."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    used = np.flatnonzero(counts > 0)
    if len(used) <= 1:
        return lengths  # one symbol: zero bits (none: nothing to code)
    weights = counts[used].copy()
    while True:
        depth = _tree_depths(weights)
        if depth.max() <= max_len:
            lengths[used] = depth
            return lengths
        weights = np.maximum(weights // 2, 1)


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    heap = [(int(w), i, i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    parent: list[int] = [-1] * len(weights)
    node = len(weights)
    while len(heap) > 1:
        w1, _, a = heapq.heappop(heap)
        w2, _, b = heapq.heappop(heap)
        parent.extend([-1])
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node, node))
        node += 1
    depth = np.zeros(len(weights), dtype=np.int64)
    for i in range(len(weights)):
        d, j = 0, i
        while parent[j] != -1:
            j = parent[j]
            d += 1
        depth[i] = d
    return depth


def check_lengths(lengths: np.ndarray) -> None:
    """``lengths`` must describe a prefix code (Kraft's sum at most 1) of at most MAX_LEN bits."""
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or (lengths.size and int(lengths.max()) > MAX_LEN):
        raise ValueError(f"code lengths above {MAX_LEN} bits")
    used = lengths[lengths > 0].astype(np.int64)
    if int(np.sum(1 << (MAX_LEN - used))) > 1 << MAX_LEN:
        raise ValueError("code lengths do not form a prefix code (Kraft sum above 1)")


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code (an integer of ``lengths[s]`` bits) of every symbol ``s``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.int64)
    order = np.lexsort((np.arange(len(lengths)), lengths))
    code, prev = 0, 0
    for s in order:
        n = int(lengths[s])
        if n == 0:
            continue
        code <<= n - prev
        codes[s] = code
        code += 1
        prev = n
    return codes


def encoded_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    """Bits of a stream with ``counts`` symbols coded with ``lengths``."""
    return int(np.dot(np.asarray(counts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)))


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """``symbols`` (ints in ``range(len(lengths))``, each with a code) as a bit stream, MSB
    first, zero-padded to whole bytes."""
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if symbols.size == 0:
        return b""
    lens = lengths[symbols]
    if (lens == 0).any() and int(np.count_nonzero(lengths)) > 0:
        raise ValueError("a symbol to encode has no code")
    codes = canonical_codes(lengths)[symbols]
    total = int(lens.sum())
    if total == 0:
        return b""
    starts = np.cumsum(lens) - lens
    owner = np.repeat(np.arange(len(symbols)), lens)
    j = np.arange(total) - starts[owner]
    bits = (codes[owner] >> (lens[owner] - 1 - j)) & 1
    return np.packbits(bits.astype(np.uint8)).tobytes()


def decode(data: bytes, lengths: np.ndarray, count: int, only: int = -1) -> np.ndarray:
    """The ``count`` symbols of ``data`` coded with ``lengths`` (``int64``); ``ValueError`` when
    the stream does not hold exactly that many valid codes. With no code at all (every length
    0), the stream is empty and holds ``count`` times the symbol ``only``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    check_lengths(lengths)
    used = np.flatnonzero(lengths > 0)
    if count < 0:
        raise ValueError(f"symbol count {count}")
    if len(used) == 1:
        raise ValueError("one code of non-zero length (a lone symbol takes zero bits)")
    if count == 0 or len(used) == 0:
        if data:
            raise ValueError(f"{len(data)} bytes where the stream holds no bits")
        if count and not 0 <= only < len(lengths):
            raise ValueError(f"the lone symbol {only} is outside the alphabet of {len(lengths)}")
        return np.full(count, max(only, 0), dtype=np.int64)
    shortest, longest = int(lengths[used].min()), int(lengths[used].max())
    nbits = 8 * len(data)
    if count * shortest > nbits:
        raise ValueError(f"{count} codes of at least {shortest} bits do not fit {len(data)} bytes")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.int64)
    padded = np.concatenate([bits, np.zeros(longest, dtype=np.int64)])
    window = np.zeros(nbits, dtype=np.int64)
    for j in range(longest):
        window = (window << 1) | padded[j : j + nbits]
    table_sym = np.zeros(1 << longest, dtype=np.int64)
    table_len = np.zeros(1 << longest, dtype=np.int64)  # 0: no code starts with these bits
    codes = canonical_codes(lengths)
    for s in used:
        n = int(lengths[s])
        lo = int(codes[s]) << (longest - n)
        hi = (int(codes[s]) + 1) << (longest - n)
        table_sym[lo:hi], table_len[lo:hi] = s, n
    sym_at, len_at = table_sym[window], table_len[window]
    sentinel = nbits
    step = np.where(len_at > 0, np.arange(nbits) + len_at, sentinel)
    step = np.minimum(step, sentinel)
    jump = np.concatenate([step, [sentinel]])
    pos = np.empty(count, dtype=np.int64)
    pos[0] = 0
    filled = 1
    while filled < count:
        m = min(filled, count - filled)
        pos[filled : filled + m] = jump[pos[:m]]
        filled += m
        if filled < count:
            jump = jump[jump]
    if int(pos.max()) >= sentinel or (len_at[pos] == 0).any():
        raise ValueError("the stream holds fewer valid codes than its count says")
    end = int(pos[-1] + len_at[pos[-1]])
    if end > nbits or (end + 7) // 8 != len(data):
        raise ValueError(
            f"the codes end at bit {end} but the stream has {nbits} bits (truncated or trailing)"
        )
    if end < nbits and bits[end:].any():
        raise ValueError("the padding after the last code is not zero")
    return sym_at[pos]
