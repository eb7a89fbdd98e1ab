# The peer's bitsandbytes wheel for the H200 calls (the device has no package index): downloads
# bitsandbytes==0.50.2 for manylinux x86_64 / CPython 3.12 and rewrites it without the libraries the device's
# CUDA 13 does not load (CUDA 11/12 builds, ROCm, Intel XPU), 43 MB -> about 7 MB, so that it fits the device
# call's 64 MiB carry beside qlab's binaries. The wheel's RECORD loses the removed files' rows.
#   python3 scripts/peer-wheel.py [DEST_DIR]        (default .whl, ignored by git; carried as ".whl")
import os
import re
import subprocess
import sys
import tempfile
import zipfile

dest = sys.argv[1] if len(sys.argv) > 1 else ".whl"
DROP = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[12]\d|rocm|hip|xpu)[^/]*\.so$")
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "bitsandbytes==0.50.2", "--no-deps", "-d", tmp,
                    "--platform", "manylinux_2_24_x86_64", "--python-version", "3.12", "--only-binary=:all:"],
                   check=True)
    (name,) = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    os.makedirs(dest, exist_ok=True)
    out = os.path.join(dest, name)
    with zipfile.ZipFile(os.path.join(tmp, name)) as src, \
            zipfile.ZipFile(out + ".part", "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if DROP.search(item.filename):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                rows = data.decode().splitlines(keepends=True)
                data = "".join(r for r in rows if not DROP.search(r.split(",", 1)[0])).encode()
            dst.writestr(item, data)
    os.replace(out + ".part", out)
    kept = [i.filename for i in zipfile.ZipFile(out).infolist() if i.filename.endswith(".so")]
    print(f"{out}: {os.path.getsize(out) / 1e6:.1f} MB; libraries kept: {', '.join(kept)}")
