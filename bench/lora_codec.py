"""LoRA codec benchmark: the Rust core's codecs against numpy implementations of the same codecs.

Run: ``.venv/bin/python bench/lora_codec.py [--values N] [--repeats R]`` (default 16M float32 values,
best of 3). For each codec it prints encode and decode throughput of the Rust core (one thread) and
of numpy, in GB/s of float32 input (4 bytes a value), the ratio, the payload bits per parameter, and
whether both implementations made the same frame bytes and the same decoded values. For top-k it
also prints what the position indices would cost as bitmaps only, as varint gaps only, and as coded
(the smaller per chunk). The numpy side hashes with the core's BLAKE3 (numpy has none): its encoder
hashes the frame, and its decoder checks the frame's hash first, as the core's does (the body is hashed
through a memoryview, uncopied); everything else it does itself. Both decoders return a new array each
time, as ``pyagent.lora.codecs.decode`` does: numpy's makes one, the core's fills ``np.empty``.
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from pyagent._core import LoraCodec, blake3, lora_decode_into

LEVELS = {"int8": 127, "int4": 7, "int2": 1}
WIRE_CODES = {"fp16": 0, "int8": 1, "int4": 2, "int2": 3}
BITS = {"fp16": 16, "int8": 8, "int4": 4, "int2": 2}


@dataclass(frozen=True)
class Case:
    label: str
    codec: str
    block_size: int
    chunk_size: int = 0
    k_per_chunk: int = 0
    seed: int | None = None


CASES = [
    Case("fp16 dense", "fp16", 256),
    Case("int8 dense", "int8", 256),
    Case("int4 dense", "int4", 128),
    Case("int2 dense", "int2", 64),
    Case("int2 dense, stochastic", "int2", 64, seed=7),
    Case("int2 top-k 10%", "int2", 64, 4096, 410),
    Case("int2 top-k 3%", "int2", 64, 4096, 123),
    Case("int2 top-k 1%", "int2", 64, 4096, 41),
    Case("int8 top-k 3%", "int8", 64, 4096, 123),
]


def uniform(seed: int, n: int) -> np.ndarray:
    """The core's stochastic draws for positions 0..n: splitmix64's finalizer of the seed and the
    position's pair, 24 bits for the even position from its top, 24 for the odd one below them."""
    z = np.uint64(seed) ^ (np.arange(-(-n // 2), dtype=np.uint64) * np.uint64(0x9E37_79B9_7F4A_7C15))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58_476D_1CE4_E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D0_49BB_1331_11EB)
    z ^= z >> np.uint64(31)
    pairs = np.stack([z >> np.uint64(40), (z >> np.uint64(16)) & np.uint64(0xFF_FFFF)], axis=1)
    return pairs.reshape(-1)[:n].astype(np.float32) * np.float32(2.0**-24)


def pack(codes: np.ndarray, bits: int) -> bytes:
    per_byte = 8 // bits
    padded = np.zeros(-(-codes.size // per_byte) * per_byte, np.uint8)
    padded[: codes.size] = codes
    slots = padded.reshape(-1, per_byte)
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    return bytes(np.bitwise_or.reduce(slots << shifts, axis=1).astype(np.uint8).tobytes())


def unpack(data: np.ndarray, bits: int, n: int) -> np.ndarray:
    per_byte = 8 // bits
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    return ((data[:, None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)[:n]


def quantize(values: np.ndarray, case: Case) -> bytes:
    if case.codec == "fp16":
        return bytes(values.astype("<f2").tobytes())
    level = LEVELS[case.codec]
    n = values.size
    blocks = -(-n // case.block_size)
    padded = np.zeros(blocks * case.block_size, np.float32)
    padded[:n] = values
    grid = padded.reshape(blocks, case.block_size)
    scales = np.abs(grid).max(axis=1)
    with np.errstate(divide="ignore"):
        to_level = np.where(scales > 0, np.float32(level) / scales, np.float32(0)).astype(np.float32)
    scaled = grid * to_level[:, None]
    if case.seed is None:
        shifted = scaled + np.float32(level + 0.5)
    else:
        draws = uniform(case.seed, grid.size).reshape(grid.shape)
        shifted = (scaled + np.float32(level)) + draws
    codes = np.clip(shifted.astype(np.int32), 0, 2 * level).astype(np.uint8).reshape(-1)[:n]
    return bytes(scales.astype("<f4").tobytes()) + pack(codes, BITS[case.codec])


def dequantize(data: np.ndarray, case: Case, n: int) -> np.ndarray:
    if case.codec == "fp16":
        return data.view("<f2").astype(np.float32)
    level = LEVELS[case.codec]
    blocks = -(-n // case.block_size)
    scales = data[: 4 * blocks].view("<f4")
    codes = unpack(data[4 * blocks :], BITS[case.codec], n).astype(np.float32)
    steps = np.repeat(scales / np.float32(level), case.block_size)[:n]
    return (codes - np.float32(level)) * steps


def varint_bytes(gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LEB128 bytes of each gap (< 2**21) as rows of 3, and how many of each row are used."""
    rows = np.stack([gaps & 0x7F, (gaps >> 7) & 0x7F, gaps >> 14], axis=1).astype(np.uint8)
    lengths = 1 + (gaps >= 1 << 7).astype(np.int64) + (gaps >= 1 << 14).astype(np.int64)
    rows[:, 0] |= np.where(lengths > 1, 0x80, 0).astype(np.uint8)
    rows[:, 1] |= np.where(lengths > 2, 0x80, 0).astype(np.uint8)
    return rows, lengths


def index_sections(values: np.ndarray, case: Case) -> tuple[bytes, np.ndarray, dict[str, int]]:
    """Top-k per chunk: the coded index sections, the kept positions, and the index bytes per coding.

    Assumes whole chunks (the benchmark's sizes are multiples of the chunk size).
    """
    chunk, k = case.chunk_size, case.k_per_chunk
    chunks = values.reshape(-1, chunk)
    local = np.sort(np.argpartition(-np.abs(chunks), k - 1, axis=1)[:, :k], axis=1)
    gaps = np.diff(local, axis=1, prepend=-1) - 1
    gaps[:, 0] = local[:, 0]
    rows, lengths = varint_bytes(gaps.reshape(-1))
    gap_bytes = rows[np.arange(3) < lengths[:, None]]
    gap_lengths = lengths.reshape(-1, k).sum(axis=1)
    gap_ends = np.cumsum(gap_lengths)
    bitmap_len = chunk // 8
    sections = []
    for index in range(chunks.shape[0]):
        if bitmap_len <= gap_lengths[index]:
            mask = np.zeros(chunk, bool)
            mask[local[index]] = True
            sections.append(b"\x00" + np.packbits(mask, bitorder="little").tobytes())
        else:
            start = gap_ends[index] - gap_lengths[index]
            sections.append(b"\x01" + gap_bytes[start : gap_ends[index]].tobytes())
    positions = (local + (np.arange(chunks.shape[0]) * chunk)[:, None]).reshape(-1)
    costs = {
        "bitmap": chunks.shape[0] * (1 + bitmap_len),
        "gaps": chunks.shape[0] + int(gap_lengths.sum()),
        "coded": sum(len(section) for section in sections),
    }
    return b"".join(sections), positions, costs


def numpy_encode(values: np.ndarray, case: Case) -> bytes:
    header = b"PYLD" + bytes([1, WIRE_CODES[case.codec], 1, values.ndim])
    header += struct.pack("<3I", case.block_size, case.chunk_size, case.k_per_chunk)
    header += struct.pack(f"<{values.ndim}Q", *values.shape)
    flat = values.reshape(-1)
    if case.chunk_size:
        indices, positions, _ = index_sections(flat, case)
        payload = indices + quantize(flat[positions], case)
    else:
        payload = quantize(flat, case)
    body = header + struct.pack("<Q", len(payload)) + payload
    return body + blake3(body)


def numpy_decode(frame: bytes, case: Case, n: int) -> np.ndarray:
    if blake3(memoryview(frame)[:-32]) != frame[-32:]:
        raise ValueError("BLAKE3 hash does not match")
    ndim = frame[7]
    payload = np.frombuffer(frame, np.uint8, offset=20 + 8 * ndim + 8)[:-32]
    if not case.chunk_size:
        return dequantize(payload, case, n)
    chunk, k = case.chunk_size, case.k_per_chunk
    positions = np.empty(n // chunk * k, np.int64)
    cursor = 0
    for index in range(n // chunk):
        mode = payload[cursor]
        cursor += 1
        if mode == 0:
            bits = np.unpackbits(payload[cursor : cursor + chunk // 8], bitorder="little")
            local = np.flatnonzero(bits)
            cursor += chunk // 8
        else:
            window = payload[cursor : cursor + 3 * k]
            ends = np.flatnonzero((window & 0x80) == 0)[:k]
            starts = np.concatenate(([0], ends[:-1] + 1))
            window = window[: ends[-1] + 1]
            place = np.arange(window.size) - np.repeat(starts, ends - starts + 1)
            gaps = np.add.reduceat((window & 0x7F).astype(np.int64) << (7 * place), starts)
            local = np.cumsum(gaps + 1) - 1
            cursor += window.size
        positions[index * k : (index + 1) * k] = local + index * chunk
    out = np.zeros(n, np.float32)
    out[positions] = dequantize(payload[cursor:], case, positions.size)
    return out


def rust_decode(frame: bytes, like: np.ndarray) -> np.ndarray:
    out = np.empty_like(like)
    lora_decode_into(frame, out)
    return out


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.values
    values = np.random.default_rng(1).standard_normal((n // 4096, 4096), dtype=np.float32)
    gigabytes = values.nbytes / 1e9
    print(f"{values.size:,} float32 values ({values.nbytes / 2**20:.0f} MiB), best of {args.repeats}")
    print(
        f"{'codec':<24} {'enc rust':>9} {'enc numpy':>9} {'ratio':>6} {'dec rust':>9} {'dec numpy':>9} "
        f"{'ratio':>6} {'bits/param':>10}  same frame, same values"
    )
    for case in CASES:
        codec = LoraCodec(case.codec, case.block_size, case.chunk_size, case.k_per_chunk)
        frame = codec.encode(values, seed=case.seed)
        numpy_frame = numpy_encode(values, case)
        out = rust_decode(frame, values)
        numpy_out = numpy_decode(frame, case, values.size).reshape(values.shape)
        encode_rust = best_seconds(partial(codec.encode, values, seed=case.seed), args.repeats)
        encode_numpy = best_seconds(partial(numpy_encode, values, case), args.repeats)
        decode_rust = best_seconds(partial(rust_decode, frame, values), args.repeats)
        decode_numpy = best_seconds(partial(numpy_decode, frame, case, values.size), args.repeats)
        bits = len(frame) * 8 / values.size
        print(
            f"{case.label:<24} {gigabytes / encode_rust:>7.2f}GB {gigabytes / encode_numpy:>7.2f}GB "
            f"{encode_numpy / encode_rust:>5.1f}x {gigabytes / decode_rust:>7.2f}GB "
            f"{gigabytes / decode_numpy:>7.2f}GB {decode_numpy / decode_rust:>5.1f}x {bits:>10.3f}  "
            f"{frame == numpy_frame}, {np.array_equal(out, numpy_out)}"
        )
    print("\nindex coding of top-k, bits per parameter (chunks of 4096):")
    for case in CASES:
        if case.chunk_size:
            _, _, costs = index_sections(values.reshape(-1), case)
            figures = ", ".join(f"{name} {8 * size / values.size:.4f}" for name, size in costs.items())
            print(f"  {case.label:<22} {figures}")


if __name__ == "__main__":
    main()
