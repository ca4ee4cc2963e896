#!/usr/bin/env python3
"""Build pyfuse3 with the GIL released around the byte work it does in C, into a Python of your choice.

    python scripts/build_pyfuse3_nogil.py --venv DIR      # a venv that sees this Python's packages
    python scripts/build_pyfuse3_nogil.py --into PYTHON   # replace pyfuse3 in that interpreter
    python scripts/build_pyfuse3_nogil.py --into PYTHON --if-needed   # what scripts/install.sh runs

pyfuse3 (3.5.0) holds the GIL while it reads each request from /dev/fuse (up to 1 MiB for a write),
while it copies a write's payload into a `bytes`, while it writes a read's reply back and while it
answers a write: in `scripts/profile_cpu.py` that is 30% of the daemon's GIL-holding samples on a
save and a quarter on a restore, time no other thread of the daemon (hashing, compressing,
uploading) can run Python in. A write's answer is a small write to /dev/fuse, but it wakes the
writer, which can take the CPU at once while the daemon's thread, descheduled, still holds the GIL.
Those four calls touch no Python object. This script takes pyfuse3's source distribution at the
version pinned below, wraps exactly those calls in `with nogil:` (failing if the source no longer
reads as expected), regenerates the C with Cython and installs the result as version LABEL below
(`pip list` and `ckptfs --version` say which build runs; the number after `nogil` counts the patch
set, so a machine with an older one builds again). ckptfs itself runs unchanged on either build;
`profile_cpu.py` run under each interpreter compares them.
scripts/install.sh builds it unless CKPTFS_STOCK_PYFUSE3=1 (docs/DESIGN.md, "pyfuse3 without the GIL").
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

VERSION = "3.5.0"
LABEL = f"{VERSION}+ckptfs.nogil.2"  # the installed build's version: what --if-needed looks for

# (file under src/pyfuse3, text as released, text with the GIL released)
EDITS = [
    ("internal.pxi",  # the session loop: the read of the next request from /dev/fuse
     "        res = fuse_session_receive_buf(session, &buf)\n",
     "        with nogil:\n"
     "            res = fuse_session_receive_buf(session, &buf)\n"),
    ("internal.pxi",  # a write's payload copied into the new bytes object (write_buf)
     "    res = fuse_buf_copy(&dst, src, 0)\n",
     "    with nogil:\n"
     "        res = fuse_buf_copy(&dst, src, 0)\n"),
    ("handlers.pxi",  # a read's reply written to /dev/fuse
     "async def fuse_read_async (_Container c):\n"
     "    cdef int ret\n"
     "    cdef Py_buffer pybuf\n",
     "async def fuse_read_async (_Container c):\n"
     "    cdef int ret\n"
     "    cdef Py_buffer pybuf\n"
     "    cdef fuse_req_t req\n"),
    ("handlers.pxi",  # a write's reply: it wakes the writer, who may take the CPU at once
     "async def fuse_write_buf_async (_Container c, buf):\n"
     "    cdef int ret\n"
     "    cdef size_t len_\n",
     "async def fuse_write_buf_async (_Container c, buf):\n"
     "    cdef int ret\n"
     "    cdef size_t len_\n"
     "    cdef fuse_req_t wreq\n"),
    ("handlers.pxi",
     "        len_ = await operations.write(c.fh, c.off, buf)\n"
     "    except FUSEError as e:\n"
     "        ret = fuse_reply_err(c.req, e.errno)\n"
     "    else:\n"
     "        ret = fuse_reply_write(c.req, len_)\n",  # `buf`: the write_buf handler, not the other one
     "        len_ = await operations.write(c.fh, c.off, buf)\n"
     "    except FUSEError as e:\n"
     "        ret = fuse_reply_err(c.req, e.errno)\n"
     "    else:\n"
     "        wreq = c.req\n"
     "        with nogil:\n"
     "            ret = fuse_reply_write(wreq, len_)\n"),
    ("handlers.pxi",
     "        ret = fuse_reply_buf(c.req, <const_char*> pybuf.buf, <size_t> pybuf.len)\n",
     "        req = c.req\n"
     "        with nogil:\n"
     "            ret = fuse_reply_buf(req, <const_char*> pybuf.buf, <size_t> pybuf.len)\n"),
]


def patch(source: pathlib.Path) -> None:
    package = source / "src" / "pyfuse3"
    for name, released, changed in EDITS:
        path = package / name
        text = path.read_text()
        if text.count(released) != 1:
            raise SystemExit(f"pyfuse3 {VERSION}: {name} does not read as expected (looked for {released.strip()!r})")
        path.write_text(text.replace(released, changed))
    generated = package / "__init__.c"
    if generated.exists():
        generated.unlink()  # the released C: the build must cythonize the edited source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--venv", type=pathlib.Path, help="make (or reuse) a venv here, with this Python's packages")
    where.add_argument("--into", help="the Python interpreter whose pyfuse3 is replaced")
    parser.add_argument("--if-needed", action="store_true", help="do nothing if that Python has this build already")
    args = parser.parse_args()
    python = args.into
    if args.venv is not None:
        if not (args.venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(args.venv)], check=True)
        python = str(args.venv / "bin" / "python")
    if args.if_needed and installed(python) == LABEL:
        return 0
    # pyfuse3 takes its version from setuptools_scm, which takes this one instead of the release's
    environment = dict(os.environ, SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PYFUSE3=LABEL)
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"pyfuse3=={VERSION}", "-d", work], check=True)
        archive = next(pathlib.Path(work).glob("pyfuse3-*.tar.gz"))
        subprocess.run(["tar", "xzf", str(archive), "-C", work], check=True)
        source = pathlib.Path(work) / f"pyfuse3-{VERSION}"
        patch(source)
        subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall",
                        "--no-deps", str(source)], check=True, env=environment)
    if installed(python) != LABEL:
        raise SystemExit(f"pyfuse3 built, but {python} reports version {installed(python)}, not {LABEL}")
    print(f"pyfuse3 {LABEL}: the GIL let go of around /dev/fuse reads, write copies and replies ({python})")
    return 0


def installed(python: str) -> str | None:
    """The version of pyfuse3 that `python` has, or None."""
    done = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('pyfuse3'))"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


if __name__ == "__main__":
    sys.exit(main())
