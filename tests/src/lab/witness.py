#!/usr/bin/python3
"""The lab's data-integrity witness, independent of mmp (runs in the full guest).

  witness.py write NODE FILE ACKS [INTERVAL]
      appends numbered, checksummed records to FILE (on the shared file system), fsyncs each
      one, then logs its number to ACKS (in the node's job folder on the host, outside the
      shared disk): a number in ACKS is a record the file system promised to keep.
  witness.py verify FILE NODE=ACKS...
      reads FILE and checks that every record acknowledged in each ACKS file is there, once,
      with a valid checksum. Prints one summary line; exit 1 when an acknowledged record is
      missing or damaged.

A record is one line: "SEQ NODE PAYLOAD SUM", SUM = the first 16 hex digits of the SHA-256 of
"SEQ NODE PAYLOAD". A torn or foreign last line (a write that was never acknowledged) is
counted as invalid, not as a loss.
"""
import hashlib
import os
import sys
import time


def record(seq, node, payload):
    body = "%010d %s %s" % (seq, node, payload)
    return "%s %s\n" % (body, hashlib.sha256(body.encode()).hexdigest()[:16])


def write(node, path, acks, interval):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    ack = os.open(acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    seq = 0
    while True:
        seq += 1
        os.write(fd, record(seq, node, os.urandom(12).hex()).encode())
        os.fsync(fd)
        os.write(ack, ("%d %.3f\n" % (seq, time.monotonic())).encode())
        time.sleep(interval)


def verify(path, pairs):
    valid = {}
    invalid = 0
    lines = 0
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        data = b""
    for raw in data.split(b"\n"):
        if not raw:
            continue
        lines += 1
        parts = raw.decode(errors="replace").split(" ")
        if len(parts) == 4:
            body = " ".join(parts[:3])
            if hashlib.sha256(body.encode()).hexdigest()[:16] == parts[3]:
                valid.setdefault(parts[1], {}).setdefault(int(parts[0]), 0)
                valid[parts[1]][int(parts[0])] += 1
                continue
        invalid += 1
    lost = 0
    report = []
    for pair in pairs:
        node, acks = pair.split("=", 1)
        acked = set()
        for line in open(acks):
            f = line.split()
            if f:
                acked.add(int(f[0]))
        have = valid.get(node, {})
        missing = sorted(acked - set(have))
        dup = sum(1 for s in acked if have.get(s, 0) > 1)
        lost += len(missing)
        report.append(
            "%s: acked %d, on disk %d, missing %d%s, duplicated %d"
            % (node, len(acked), len(have), len(missing),
               " (first %d)" % missing[0] if missing else "", dup)
        )
    print("records %d, invalid %d; %s" % (lines, invalid, "; ".join(report)))
    return 1 if lost else 0


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "write":
        interval = float(sys.argv[5]) if len(sys.argv) > 5 else 0.1
        write(sys.argv[2], sys.argv[3], sys.argv[4], interval)
    elif len(sys.argv) >= 3 and sys.argv[1] == "verify":
        sys.exit(verify(sys.argv[2], sys.argv[3:]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
