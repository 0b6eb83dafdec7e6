"""A `.pte` that stores repeated bytes once: a delegate's named data that equals a program constant reads it.

ExecuTorch's serializer deduplicates named data against named data, never against the program's constant
segment. A tied model's int4 embedding (a program constant, for ``embedding_4bit``) and its output layer
(XNNPACK's named data) can be the same bytes (export/tied_embedding.py); here the named-data segment is
pointed at the constant's bytes and its own copy dropped. Segments are byte ranges of the file, so two may
overlap; the runtime loads each by offset and size. Nothing else changes: the program is re-encoded by
ExecuTorch's own flatbuffer code with the new segment table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# ExecutorchBackendConfig's default segment alignment, which every segment's offset is a multiple of.
SEGMENT_ALIGNMENT = 128
# Smaller runs of equal bytes (scales of a small layer) are not worth a segment-table entry.
MIN_SHARED_BYTES = 4096


@dataclass
class Shared:
    program: bytes
    segments_shared: int
    # The dropped copies: data the program now reads from a constant (the file shrinks by this plus the
    # alignment padding that went with them).
    bytes_stored_once: int


def _constant_starts(program, constant_offset: int, constant_size: int) -> list[tuple[int, int]]:
    """(start, room) of each constant in the constant segment, relative to the segment base."""
    starts = sorted(set(program.constant_segment.offsets))
    ends = starts[1:] + [constant_size]
    return [(constant_offset + s, e - s) for s, e in zip(starts, ends) if e > s]


def _matches(data: memoryview, named, constants: list[tuple[int, int]]) -> int | None:
    """Offset of a constant whose first bytes equal the named-data segment's, or None."""
    size = named.size
    wanted = data[named.offset:named.offset + size]
    digest = None
    for start, room in constants:
        if room < size or data[start:start + 64] != wanted[:64]:
            continue
        digest = digest or hashlib.sha256(wanted).digest()
        if hashlib.sha256(data[start:start + size]).digest() == digest:
            return start
    return None


def store_repeated_data_once(pte: bytes) -> Shared:
    """The same program with each named-data segment that repeats a program constant's bytes aliased to them."""
    from executorch.exir._serialize._flatbuffer_program import _flatbuffer_to_program, _program_to_flatbuffer
    from executorch.exir._serialize._program import _ExtendedHeader, _get_extended_header, _insert_flatbuffer_header
    from executorch.exir._serialize.padding import aligned_size, pad_to

    header = _get_extended_header(pte)
    if header is None or not header.is_valid():
        return Shared(pte, 0, 0)
    program = _flatbuffer_to_program(pte[:header.program_size])
    if not program.named_data or not program.constant_segment or not program.constant_segment.offsets:
        return Shared(pte, 0, 0)
    segments = program.segments
    data = memoryview(pte)[header.segment_base_offset:]
    constant = segments[program.constant_segment.segment_index]
    constants = _constant_starts(program, constant.offset, constant.size)
    named_only = {n.segment_index for n in program.named_data}
    for other in (program.constant_segment.segment_index, *(s.segment_index for s in program.mutable_data_segments or [])):
        named_only.discard(other)
    # A segment can hold several keys (the serializer deduplicates named data); alias it only once.
    aliases = {}
    for index in sorted(named_only):
        if segments[index].size >= MIN_SHARED_BYTES:
            start = _matches(data, segments[index], constants)
            if start is not None:
                aliases[index] = start
    if not aliases:
        return Shared(pte, 0, 0)

    # The kept segments keep their order; each moves down by the dropped bytes before it (a multiple of the
    # alignment, since every segment starts on it).
    kept = sorted((i for i in range(len(segments)) if i not in aliases), key=lambda i: segments[i].offset)
    out, position, moved = [], 0, {}
    for i in kept:
        segment = segments[i]
        gap = aligned_size(position, SEGMENT_ALIGNMENT) - position
        out.append(b"\0" * gap)
        position += gap
        moved[i] = position
        out.append(data[segment.offset:segment.offset + segment.size])
        position += segment.size
    old_constant_offset, new_constant_offset = constant.offset, moved[program.constant_segment.segment_index]
    for i, offset in moved.items():
        segments[i].offset = offset
    for i, start in aliases.items():
        segments[i].offset = start - old_constant_offset + new_constant_offset

    flatbuffer = _program_to_flatbuffer(program)
    header_length = aligned_size(_ExtendedHeader.EXPECTED_LENGTH, flatbuffer.max_alignment)
    program_size = header_length + len(flatbuffer.data)
    base = aligned_size(program_size, SEGMENT_ALIGNMENT)
    new_header = _ExtendedHeader(program_size=program_size, segment_base_offset=base, segment_data_size=position)
    program_data = _insert_flatbuffer_header(
        flatbuffer.data, r"ET[0-9a-zA-Z][0-9a-zA-Z]", pad_to(new_header.to_bytes(), header_length))
    result = b"".join([program_data, b"\0" * (base - len(program_data)), *out])
    return Shared(result, len(aliases), sum(segments[i].size for i in aliases))
