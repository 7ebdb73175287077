"""An exec worker in the batched protocol (see dataflows/README.md): answers each record
with itself, its key and value copied through. `flowd bench exec --worker` can run it."""
import struct
import sys

inp = sys.stdin.buffer
out = sys.stdout.buffer
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    (length,) = struct.unpack("<I", head)
    body = inp.read(length)
    (count,) = struct.unpack_from("<I", body, 0)
    at = 4
    parts = [b""]
    for _ in range(count):
        start = at
        at += 8
        (klen,) = struct.unpack_from("<I", body, at)
        at += 4 + (0 if klen == 0xFFFFFFFF else klen)
        (vlen,) = struct.unpack_from("<I", body, at)
        at += 4 + vlen
        # id, status 0, one output, then the record's key and value as they came.
        parts.append(body[start : start + 8] + b"\x00\x01\x00\x00\x00" + body[start + 8 : at])
    answer = b"".join(parts)
    out.write(struct.pack("<II", len(answer) + 4, count) + answer)
    out.flush()
