#!/usr/bin/env python3
"""Export scikit-learn's bundled digits data set (1,797 8x8 images, 10 classes) once.

Downloads the scikit-learn wheel from PyPI with `pip download --no-deps` (nothing is installed),
copies `sklearn/datasets/data/digits.csv.gz` out of it unchanged and prints its sha256, which the
Rust loader checks. Each CSV row is 64 pixel values (0..16, row-major 8x8) then the label.

The data are the UCI "Optical Recognition of Handwritten Digits" test set (CC BY 4.0), as shipped
by scikit-learn (BSD-3-Clause).

Usage: python3 scripts/nes/export_digits.py [OUT]   (default crates/frugal-nes/data/digits.csv.gz)
"""
import glob
import hashlib
import subprocess
import sys
import tempfile
import zipfile

VERSION = "1.5.2"
MEMBER = "sklearn/datasets/data/digits.csv.gz"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "crates/frugal-nes/data/digits.csv.gz"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--platform", "manylinux2014_x86_64", "--python-version", "3.11",
             "-d", tmp, f"scikit-learn=={VERSION}"],
            check=True,
        )
        wheel = glob.glob(f"{tmp}/scikit_learn-*.whl")[0]
        data = zipfile.ZipFile(wheel).read(MEMBER)
    with open(out, "wb") as f:
        f.write(data)
    print(out, len(data), "bytes, sha256", hashlib.sha256(data).hexdigest())


if __name__ == "__main__":
    main()
