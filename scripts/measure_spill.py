"""Spill rate against boto3 upload_file on one fresh moto_server."""
import os, sys, time, subprocess, argparse
sys.path.insert(0, "/work/main/scripts")
import bench
MIB = 1 << 20
args = argparse.Namespace(endpoint_url=None, bucket=None, footprint_gib=0, workdir=None)
b = bench.Bench(args)
try:
    src = os.path.join(b.workdir, "src.bin")
    block = bytearray(os.urandom(MIB))
    with open(src, "wb") as f:
        for n in range(1024):
            for s in range(0, MIB, 65536):
                block[s:s+8] = (n * MIB + s + 7).to_bytes(8, "little")
            f.write(block)
    os.sync()
    t = time.perf_counter(); b.s3.upload_file(src, b.bucket, "direct.bin"); boto = 1024 * MIB / (time.perf_counter() - t) / 1e6
    print(f"boto3 upload_file: {boto:.0f} MB/s")
    system = bench.Ckptfs(b)
    system.start(cache="c", extra=["--cache-size", "512M"])
    try:
        fd = os.open(system.path("big.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        marks = {}
        t0 = time.perf_counter()
        for n in range(int(sys.argv[1]) * 1024):
            for s in range(0, MIB, 65536):
                block[s:s+8] = (n * MIB + s).to_bytes(8, "little")
            os.write(fd, block)
            if n % 512 == 511:
                marks[n + 1] = time.perf_counter() - t0
        os.close(fd)
        print({k: round(v, 1) for k, v in marks.items()})
        ks = sorted(marks)
        steady = (ks[-1] - ks[1]) * MIB / (marks[ks[-1]] - marks[ks[1]]) / 1e6
        print(f"spilling write rate after the first GiB: {steady:.0f} MB/s ({steady / boto:.2f}x boto3)")
        t = time.perf_counter()
    finally:
        system.stop()
        print(f"drain at unmount {time.perf_counter() - t:.1f} s")
        system.cleanup()
finally:
    b.close()
