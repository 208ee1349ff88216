#!/usr/bin/env bash
# The image's root filesystem, from a built kubelet-guard binary:
#
#   deploy/image/rootfs.sh BINARY DIR
#
# DIR is replaced by: /kubelet-guard, the shared libraries the binary links (copied from this
# machine, at the paths the dynamic loader looks for them), /etc/passwd and /etc/group naming
# root and nonroot (65532), /etc/nsswitch.conf, and a world-writable sticky /tmp. Nothing else:
# no shell, no package manager, no package database. Both image builds use it, so they hold the
# same files: deploy/image/build.sh (an OCI archive, no container engine) and the Dockerfile's
# build stage (its runtime stage is FROM scratch and copies DIR).
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 BINARY DIR" >&2
  exit 64
fi
binary=$1
root=$2

rm -rf "$root"
mkdir -p "$root"
# Every directory 0755 whatever the umask, and the root itself too: a layer's root entry would
# otherwise set the mode of / in the container.
umask 022
chmod 0755 "$root"

install -m 0755 "$binary" "$root/kubelet-guard"

# The libraries, as ldd names them (linux-vdso is the kernel's, not a file). Only the C runtime
# is expected: ring and std need nothing else. A new library means a new dependency linked a
# system library (an OpenSSL, a libz): that must be a deliberate change here, not a silent one.
libraries=$(ldd "$binary" | awk '/=>/ { print $3; next } $1 ~ /^\// { print $1 }')
for library in $libraries; do
  case "$(basename "$library")" in
    libc.so.* | libm.so.* | libgcc_s.so.* | ld-linux-*.so.*) ;;
    *)
      echo "error: $binary links $library; only glibc, libm and libgcc_s are expected" >&2
      exit 1
      ;;
  esac
  # The file itself, at the path the loader asks for (the binary's interpreter path included).
  install -D -m 0755 "$(readlink -f "$library")" "$root$library"
done

mkdir -p "$root/etc"
# Numeric ids are all the image needs (User 65532:65532); the names are for tools that print them.
printf '%s\n' \
  'root:x:0:0:root:/root:/sbin/nologin' \
  'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' >"$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$root/etc/group"
# glibc without nsswitch.conf asks DNS before /etc/hosts; this is the usual order. Both sources
# are built into glibc 2.34 and newer, so no libnss_* library is needed.
printf '%s\n' 'hosts: files dns' >"$root/etc/nsswitch.conf"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"

mkdir -p "$root/tmp"
chmod 1777 "$root/tmp"
