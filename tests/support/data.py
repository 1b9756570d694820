"""Token shards on disk, as the data loader reads them (mousse.train.data)."""

import struct


def write_shard(path, tokens, magic=20240520, version=1, n=None, cut=0):
    header = struct.pack("<3i", magic, version, len(tokens) if n is None else n) + bytes(1012)
    body = struct.pack(f"<{len(tokens)}H", *tokens)
    path.write_bytes((header + body)[: len(header + body) - cut])
    return path
