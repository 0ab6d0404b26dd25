#!/usr/bin/env bash
# Builds the root filesystem a node runs our binaries on, from exactly the Debian packages of
# the image's runtime base (workloads/image/base-packages.txt): `apt-get download` + `dpkg -x`,
# plus what the distroless base adds besides packages (its passwd and group with the nonroot
# user 65532, nsswitch.conf, the CA bundle, /tmp, /home/nonroot) and the mount points a
# kubelet fills (/etc/hosts, /etc/resolv.conf, /etc/hostname, /proc, /dev).
#
# The node test (cargo test -p odds-operator --test node) chroots into it as the pod's user,
# with the root read-only. Run as root (chroot, and files owned by root as in the image);
# otherwise it says loudly that it did not run, and so does the node test.
#
#   bash workloads/image/rootfs.sh [OUT]     # OUT defaults to $CARGO_TARGET_DIR/rootfs
# Prints the root's path on its last line. Rebuilds only when the package list changes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
list="$here/base-packages.txt"
dockerfile="$here/Dockerfile"
out="${1:-${CARGO_TARGET_DIR:-$here/../../target}/rootfs}"

field() { awk -v k="$1" '$1 == k { print $2 }' "$list"; }
from="$(field from)"
codename="$(field codename)"
user="$(field user)"
mapfile -t packages < <(field package)

# The list must describe the base the Dockerfile really uses: its last FROM is the runtime.
runtime_from="$(awk 'toupper($1) == "FROM" { image = $2 } END { print image }' "$dockerfile")"
if [ "$runtime_from" != "$from" ]; then
  echo "rootfs.sh: workloads/image/Dockerfile's runtime base is '$runtime_from' but base-packages.txt describes '$from': update the package list with the base image" >&2
  exit 1
fi
if [ -z "$codename" ] || [ -z "$user" ] || [ "${#packages[@]}" -eq 0 ]; then
  echo "rootfs.sh: base-packages.txt needs 'codename', 'user' and 'package' lines" >&2
  exit 1
fi

if [ "$(id -u)" != 0 ]; then
  cat >&2 <<EOF
################################################################################
# NOT RUN: the image root filesystem check needs root (dpkg -x ownership, chroot).
# The binaries were NOT run in the image's base ($from), and the node test will
# say the same. CI runs as root; run 'sudo make rootfs' or 'make test' as root.
################################################################################
EOF
  exit 0
fi

host_codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
if [ "$host_codename" != "$codename" ]; then
  echo "rootfs.sh: the base is Debian '$codename' but this machine's apt is '$host_codename'; apt-get download would fetch another release's libraries" >&2
  exit 1
fi

# Parallel tests may ask for it at once: one builds, the others wait and reuse.
mkdir -p "$out"
exec 9>"$out/lock"
flock 9

stamp="$(sha256sum "$list" "$0" | sha256sum | cut -c1-16)"
root="$out/root"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -e "$root/lib/x86_64-linux-gnu/libc.so.6" ]; then
  echo "$root"
  exit 0
fi

debs="$out/debs"
mkdir -p "$debs"
# A fresh machine may have no package lists yet.
if ! (cd "$debs" && apt-get download "${packages[@]}" >/dev/null 2>&1); then
  apt-get update -qq
  (cd "$debs" && apt-get download "${packages[@]}" >/dev/null)
fi

staging="$out/root.new"
rm -rf "$staging"
mkdir -p "$staging"
for package in "${packages[@]}"; do
  deb="$(ls -t "$debs/${package}"_*.deb | head -1)"
  dpkg -x "$deb" "$staging"
done

# What distroless adds besides packages.
mkdir -p "$staging"/{etc,tmp,home/nonroot,usr/local/bin,proc,dev,sys,etc/ssl/certs}
chmod 1777 "$staging/tmp"
chown "$user" "$staging/home/nonroot"
cat >"$staging/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:${user%%:*}:${user##*:}:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$staging/etc/group" <<EOF
root:x:0:
nobody:x:65534:
nonroot:x:${user##*:}:
EOF
echo "hosts: files dns" >"$staging/etc/nsswitch.conf"
cat "$staging"/usr/share/ca-certificates/mozilla/*.crt >"$staging/etc/ssl/certs/ca-certificates.crt"
: >"$staging/etc/hosts"
: >"$staging/etc/resolv.conf"
: >"$staging/etc/hostname"

rm -rf "$root"
mv "$staging" "$root"
echo "$stamp" >"$out/stamp"
echo "rootfs.sh: built $root from ${#packages[@]} packages of $from" >&2
echo "$root"
