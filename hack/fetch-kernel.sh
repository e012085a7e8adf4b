#!/usr/bin/env bash
# Fetches the current Debian kernel package and extracts what the kernel test layer
# (tests/kernel/) boots under qemu: the bzImage (vmlinuz) and the uncompressed ELF
# (vmlinux, PVH-bootable, ~2.5 s faster per boot under TCG), and its modules. Idempotent; cached under
# $VARMOR_CACHE/kernel/<package>/. The package name is resolved through the
# linux-image-amd64 metapackage, never hard-coded: the ABI number (-56) changes with
# Debian point releases and old packages leave the mirror.
# Prints the directory holding vmlinuz and vmlinux on stdout (progress goes to stderr).
set -euo pipefail

CACHE="${VARMOR_CACHE:-$HOME/.cache/varmor}/kernel"
mkdir -p "$CACHE"

command -v apt-cache >/dev/null || { echo "apt-cache is required (Debian/Ubuntu host)" >&2; exit 1; }

pkg="${VARMOR_KERNEL_PACKAGE:-}"
if [[ -z "$pkg" ]]; then
  pkg="$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
fi
if [[ -z "$pkg" ]]; then
  # Offline or no package lists: reuse the newest cached kernel rather than failing.
  last="$(ls -1d "$CACHE"/linux-image-* 2>/dev/null | sort -V | tail -n1 || true)"
  if [[ -n "$last" && -s "$last/vmlinux" && -s "$last/vmlinuz" ]]; then
    echo "$last"
    exit 0
  fi
  echo "cannot resolve linux-image-amd64 (run apt-get update?)" >&2
  exit 1
fi

out="$CACHE/$pkg"
if [[ -s "$out/vmlinux" && -s "$out/vmlinuz" && -d "$out/modules" ]]; then
  ln -sfn "$pkg" "$CACHE/current"
  echo "$out"
  exit 0
fi

work="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# Download as root into our own temp dir (the _apt sandbox user cannot write there).
(cd "$work" && apt-get -o APT::Sandbox::User=root download "$pkg" >&2)
deb="$(ls "$work"/*.deb)"
version="${pkg#linux-image-}"
version="${version%-unsigned}"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" "./boot/vmlinuz-$version" "./lib/modules/$version/kernel"
mkdir -p "$work/out"
mv "$work/boot/vmlinuz-$version" "$work/out/vmlinuz"
# The modules, for the node layer's VM (tests/node), which loads what it needs by hand.
mv "$work/lib/modules/$version/kernel" "$work/out/modules"

# The bzImage carries an xz-compressed ELF; decompressing it gives the vmlinux that
# qemu's microvm machine boots directly through its PVH note.
python3 - "$work/out/vmlinuz" "$work/out/vmlinux" <<'EOF'
import lzma, sys
data = open(sys.argv[1], "rb").read()
start = data.find(b"\xfd7zXZ\x00")
if start < 0:
    sys.exit("vmlinuz: no xz payload found")
elf = lzma.LZMADecompressor().decompress(data[start:])
if not elf.startswith(b"\x7fELF"):
    sys.exit("vmlinuz: payload is not an ELF")
open(sys.argv[2], "wb").write(elf)
EOF
echo "$pkg" > "$work/out/package"
rm -rf "$out"
mv "$work/out" "$out"
ln -sfn "$pkg" "$CACHE/current"
echo "$out"
