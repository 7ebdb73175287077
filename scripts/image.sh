#!/usr/bin/env bash
# Builds flowd's OCI image from the binary, with no base image and no registry:
# a root holding only the (stripped) binary, the libraries `ldd` says it loads,
# /etc/passwd and /etc/group naming user flowd (65532), the default dataflow, and
# /data (the volume, owned by flowd, 0700). buildah commits it `FROM scratch`.
#
#   scripts/image.sh                    # cargo build --release, then flowd:VERSION
#   FLOWD_BIN=path/to/flowd scripts/image.sh
#   scripts/image.sh --rootfs DIR       # only the root filesystem, in DIR
#   scripts/image.sh --archive FILE     # the image, also as an OCI archive
#   podman run --rm -v flowd-data:/data --network host flowd:VERSION
#
# Needs buildah (Debian: `apt-get install buildah`; run it as root, or rootless with
# subuids). FLOWD_IMAGE names the image (default flowd:VERSION). The Containerfile
# beside it builds the same image where a registry is at hand.
set -euo pipefail
cd "$(dirname "$0")/.."

rootfs=""
archive=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rootfs) rootfs="$2"; shift 2 ;;
    --archive) archive="$2"; shift 2 ;;
    *) echo "image.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image="${FLOWD_IMAGE:-flowd:$version}"
bin="${FLOWD_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=target/release/flowd
fi
[ -x "$bin" ] || { echo "image.sh: $bin is not an executable flowd" >&2; exit 1; }

keep_root=1
if [ -z "$rootfs" ]; then
  rootfs=$(mktemp -d)
  keep_root=0
fi
cleanup() { [ "$keep_root" = 1 ] || rm -rf "$rootfs"; }
trap cleanup EXIT

# /proc, /sys and /dev: where the container runtime mounts them (glommio reads the CPU
# topology from /sys).
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/flowd" "$rootfs/data" "$rootfs/tmp" \
  "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
strip -o "$rootfs/usr/local/bin/flowd" "$bin"
# The dynamic loader and every library the binary loads, at the paths it looks in.
for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
cat > "$rootfs/etc/passwd" <<PASSWD
root:x:0:0:root:/:/sbin/nologin
flowd:x:65532:65532:flowd:/data:/sbin/nologin
PASSWD
cat > "$rootfs/etc/group" <<GROUP
root:x:0:
flowd:x:65532:
GROUP
# Names resolve from /etc/hosts, then DNS (the peers' --seeds on Kubernetes).
echo "hosts: files dns" > "$rootfs/etc/nsswitch.conf"
cp deploy/image/dataflow.toml "$rootfs/etc/flowd/dataflow.toml"
chmod 1777 "$rootfs/tmp"
chown 65532:65532 "$rootfs/data"
chmod 0700 "$rootfs/data"

if [ "$keep_root" = 1 ]; then
  echo "image.sh: root filesystem in $rootfs ($(du -sh "$rootfs" | cut -f1))"
  exit 0
fi

command -v buildah >/dev/null || { echo "image.sh: needs buildah (apt-get install buildah)" >&2; exit 1; }
container=$(buildah from scratch)
# Copied with owners and modes kept: /data stays flowd's, 0700.
mount=$(buildah mount "$container")
cp -a "$rootfs/." "$mount/"
buildah umount "$container" >/dev/null
buildah config \
  --user 65532:65532 \
  --workingdir /data \
  --volume /data \
  --port 7070/tcp --port 7080/tcp --port 7946/tcp --port 9092/tcp \
  --entrypoint '["/usr/local/bin/flowd", "run"]' \
  --cmd '["/etc/flowd/dataflow.toml", "--data-dir", "/data/flowd"]' \
  --label org.opencontainers.image.title=flowd \
  --label "org.opencontainers.image.version=$version" \
  --label org.opencontainers.image.source=https://github.com/flowd/flowd \
  "$container"
buildah commit --quiet "$container" "$image" >/dev/null
buildah rm "$container" >/dev/null
if [ -n "$archive" ]; then
  buildah push --quiet "$image" "oci-archive:$archive:$image"
fi
echo "image.sh: built $image ($(buildah images --format '{{.Size}}' "$image" | head -1))"
