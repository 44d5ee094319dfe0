#!/usr/bin/env python3
"""One filesystem workload, run the same way on any directory; prints one JSON object.

Usage: bench-fs.py DIR [BIG_MIB] [SMALL_FILES] [big|small]   (default: both parts)
  seqWriteMiBps   a BIG_MIB file written in 1 MiB writes, until close returns
  seqReadMiBps    the same file read back in 1 MiB reads (page cache dropped first)
  randReadOps     4 KiB reads at random offsets of it (page cache dropped first)
  create/stat/readdir/unlink per second over SMALL_FILES files of 4 KiB in 100 directories
  (readdir twice: after the caches were dropped, and again at once)
"""
import json, os, random, sys, time

def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass

def main():
    d = sys.argv[1]
    big_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    small = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    part = sys.argv[4] if len(sys.argv) > 4 else "all"
    out = {}
    if part in ("all", "big"):
        big_file(d, big_mib, out)
    if part in ("all", "small"):
        small_files(d, small, out)
    print(json.dumps(out))

def big_file(d, big_mib, out):
    block = os.urandom(1 << 20)
    big = os.path.join(d, "big.bin")
    drop_caches()
    t = time.perf_counter()
    fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(big_mib):
        # Vary each MiB so nothing deduplicates.
        os.write(fd, i.to_bytes(8, "little") + block[8:])
    os.close(fd)
    out["seqWriteMiBps"] = round(big_mib / (time.perf_counter() - t), 1)

    drop_caches()
    t = time.perf_counter()
    fd = os.open(big, os.O_RDONLY)
    n = 0
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        n += len(b)
    os.close(fd)
    assert n == big_mib << 20, n
    out["seqReadMiBps"] = round(big_mib / (time.perf_counter() - t), 1)

    drop_caches()
    rng = random.Random(7)
    reads = 2000
    fd = os.open(big, os.O_RDONLY)
    t = time.perf_counter()
    for _ in range(reads):
        off = rng.randrange(0, (big_mib << 20) - 4096) & ~4095
        assert len(os.pread(fd, 4096, off)) == 4096
    out["randReadOps"] = round(reads / (time.perf_counter() - t))
    os.close(fd)
    os.unlink(big)

def list_all(dirs, small):
    """Entries listed per second, listing each of `dirs` once."""
    t = time.perf_counter()
    names = 0
    for x in dirs:
        names += len(os.listdir(x))
    assert names == small, names
    return round(small / (time.perf_counter() - t))

def small_files(d, small, out):
    data = os.urandom(4096)
    root = os.path.join(d, "small")
    os.mkdir(root)
    dirs = [os.path.join(root, "d%02d" % i) for i in range(100)]
    for x in dirs:
        os.mkdir(x)
    paths = [os.path.join(dirs[i % 100], "f%05d" % i) for i in range(small)]
    t = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    out["createPerSec"] = round(small / (time.perf_counter() - t))
    drop_caches()
    t = time.perf_counter()
    for p in paths:
        os.stat(p)
    out["statPerSec"] = round(small / (time.perf_counter() - t))
    drop_caches()
    out["readdirEntriesPerSec"] = list_all(dirs, small)
    # The same listings again, as a shell or a build lists a folder it listed a moment ago.
    out["readdirAgainEntriesPerSec"] = list_all(dirs, small)
    t = time.perf_counter()
    for p in paths:
        os.unlink(p)
    out["unlinkPerSec"] = round(small / (time.perf_counter() - t))
    for x in dirs:
        os.rmdir(x)
    os.rmdir(root)

main()
