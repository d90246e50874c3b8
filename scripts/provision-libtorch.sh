#!/usr/bin/env bash
# Provision libtorch 2.11.0 for tch 0.24 from PyPI wheels into .libtorch/ (git-ignored).
#
# Layout mirrors site-packages so libtorch's own RUNPATH ($ORIGIN/../../nvidia/cu13/lib)
# finds libcudart.so.13 / libcupti.so.13 without any environment variable:
#   .libtorch/torch/{lib,include,share}   LIBTORCH points here
#   .libtorch/cpu/lib                    symlinks to the CPU libraries only (LIBTORCH_LIB)
#   .libtorch/nvidia/cu13/lib             CUDA runtime + CUPTI (needed by libtorch_cpu at load time)
# Idempotent: does nothing when .libtorch/.complete-<version> exists.
set -euo pipefail

TORCH_VERSION="2.11.0"
CUDART_VERSION="13.0.96"
CUPTI_VERSION="13.0.85"

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${LIBTORCH_DEST:-$root/.libtorch}"
stamp="$dest/.complete-$TORCH_VERSION"

if [[ -f "$stamp" ]]; then
  exit 0
fi

python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "provision-libtorch: downloading torch==$TORCH_VERSION and CUDA runtime wheels from PyPI" >&2
# --platform/--python-version pin the manylinux x86_64 wheel regardless of the local interpreter.
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
  -d "$work" "torch==$TORCH_VERSION"
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$work" "nvidia-cuda-runtime==$CUDART_VERSION" "nvidia-cuda-cupti==$CUPTI_VERSION"

staging="$dest.partial"
rm -rf "$staging"
mkdir -p "$staging"
"$python" - "$work" "$staging" <<'PY'
import pathlib, sys, zipfile
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
keep = ("torch/lib/", "torch/include/", "torch/share/", "nvidia/cu13/lib/")
for whl in sorted(work.glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            name = info.filename
            if not name.startswith(keep) or name.endswith("/"):
                continue
            # The Python extension is not needed to link or run a Rust binary.
            if name.startswith("torch/lib/libtorch_python"):
                continue
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            mode = (info.external_attr >> 16) & 0o777
            target.chmod(mode or 0o644)
PY
# CPU-only view of lib/ for torch-sys (it links every libtorch_* it finds there).
# torch-sys reads $LIBTORCH_LIB/lib.
mkdir -p "$staging/cpu/lib"
for so in libc10.so libtorch.so libtorch_cpu.so libgomp.so.1; do
  ln -s "../../torch/lib/$so" "$staging/cpu/lib/$so"
done
rm -rf "$dest"
mv "$staging" "$dest"
touch "$stamp"
echo "provision-libtorch: libtorch $TORCH_VERSION ready in $dest" >&2
