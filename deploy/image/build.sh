#!/usr/bin/env bash
# Builds the container image without a container engine or a base image:
#
#   deploy/image/build.sh
#
# writes target/image/kubelet-guard.oci.tar (an OCI image layout in a tar archive: load it with
# `docker load`, `podman load`, `ctr -n k8s.io images import`, or push it with
# `skopeo copy oci-archive:target/image/kubelet-guard.oci.tar docker://REGISTRY/kubelet-guard:TAG`)
# and target/image/kubelet-guard.cdx.json (its CycloneDX SBOM).
#
# Inputs are this repository, crates.io (Cargo.lock, --locked) and this machine's Debian
# packages (the C runtime the binary links, and the tools below). The layout is written by hand
# (tar, gzip, sha256sum, jq) rather than by buildah: no storage driver, no daemon, and every byte
# is determined by the inputs. Timestamps are the last commit's (SOURCE_DATE_EPOCH overrides),
# entries are sorted and owned by 0:0, build paths are remapped out of the binary: the same
# commit, toolchain and libraries give the same archive, digest for digest.
#
# Environment: SOURCE_URL (the org.opencontainers.image.source label; default: the git remote
# `origin`, and the label is left out when there is neither), SOURCE_DATE_EPOCH.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

# What the script runs, and the Debian package that has it.
missing=()
for tool_package in jq:jq gzip:gzip tar:tar sha256sum:coreutils ldd:libc-bin git:git; do
  command -v "${tool_package%%:*}" >/dev/null || missing+=("${tool_package#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo-cyclonedx >/dev/null; then
  cargo install cargo-cyclonedx --locked
fi

epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
revision=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain)" ]; then
  revision="$revision-dirty"
fi
version=$(cargo metadata --locked --no-deps --format-version 1 |
  jq -r '.packages[] | select(.name == "kubelet-guard") | .version')
source_url=${SOURCE_URL:-$(git remote get-url origin 2>/dev/null || true)}
# The binary is built for this machine, so the image is for its architecture (OCI's names).
case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) echo "build.sh: no OCI architecture name known for $(uname -m)" >&2; exit 1 ;;
esac

# The Dockerfile's build stage remaps the same way (/src and /usr/local/cargo there).
export RUSTFLAGS="--remap-path-prefix=$repo=. --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=cargo"
# Without SOURCE_DATE_EPOCH: the cc crate makes ring's build script depend on it, so a new commit
# time would rebuild ring and everything above it (minutes), for no change in the binary.
env -u SOURCE_DATE_EPOCH cargo build --profile dist --locked --bin kubelet-guard
# From here on: the tar timestamps, and the SBOM's.
export SOURCE_DATE_EPOCH=$epoch

out=target/image
work=$out/work
rm -rf "$work"
mkdir -p "$work/layout/blobs/sha256"
deploy/image/rootfs.sh target/dist/kubelet-guard "$work/rootfs"

# Reproducible tar: sorted, fixed times, numeric root ownership, no atime/ctime records.
det_tar() {
  tar --sort=name --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner "$@"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
# Moves a file into the layout's blobs, printing its digest.
blob() {
  local digest
  digest=$(sha "$1")
  mv "$1" "$work/layout/blobs/sha256/$digest"
  echo "sha256:$digest"
}

# One layer: the whole root filesystem (7 files), listed by name so that no `./` entry sets the
# mode of / in the container.
mapfile -t top < <(cd "$work/rootfs" && LC_ALL=C ls -A)
det_tar -C "$work/rootfs" -cf "$work/layer.tar" "${top[@]}"
diff_id="sha256:$(sha "$work/layer.tar")"
gzip -n -9 "$work/layer.tar"
layer_size=$(size "$work/layer.tar.gz")
layer_digest=$(blob "$work/layer.tar.gz")

labels=$(jq -cn --arg version "$version" --arg revision "$revision" --arg created "$created" \
  --arg source "$source_url" '{
    "org.opencontainers.image.title": "kubelet-guard",
    "org.opencontainers.image.description": "A node-local authorizing reverse proxy for the kubelet API",
    "org.opencontainers.image.licenses": "Apache-2.0",
    "org.opencontainers.image.version": $version,
    "org.opencontainers.image.revision": $revision,
    "org.opencontainers.image.created": $created
  } + (if $source == "" then {} else {"org.opencontainers.image.source": $source} end)')
if [ -z "$source_url" ]; then
  echo "note: no SOURCE_URL and no git remote origin: label org.opencontainers.image.source left out" >&2
fi

jq -cn --arg created "$created" --arg diff_id "$diff_id" --argjson labels "$labels" --arg arch "$arch" '{
  created: $created,
  architecture: $arch,
  os: "linux",
  config: {
    User: "65532:65532",
    Entrypoint: ["/kubelet-guard"],
    WorkingDir: "/",
    Labels: $labels
  },
  rootfs: {type: "layers", diff_ids: [$diff_id]},
  history: [{created: $created, created_by: "deploy/image/build.sh"}]
}' >"$work/config.json"
config_size=$(size "$work/config.json")
config_digest=$(blob "$work/config.json")

jq -cn --arg config "$config_digest" --argjson config_size "$config_size" \
  --arg layer "$layer_digest" --argjson layer_size "$layer_size" --argjson labels "$labels" '{
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $config, size: $config_size},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $layer, size: $layer_size}],
  annotations: $labels
}' >"$work/manifest.json"
manifest_size=$(size "$work/manifest.json")
manifest_digest=$(blob "$work/manifest.json")

# ref.name is the tag (`skopeo copy oci-archive:FILE:VERSION`); containerd and Docker name the
# imported image after io.containerd.image.name, the reference the DaemonSet uses.
jq -cn --arg manifest "$manifest_digest" --argjson size "$manifest_size" --arg version "$version" \
  --arg arch "$arch" '{
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [{
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: $manifest,
    size: $size,
    platform: {architecture: $arch, os: "linux"},
    annotations: {
      "org.opencontainers.image.ref.name": $version,
      "io.containerd.image.name": ("docker.io/library/kubelet-guard:" + $version)
    }
  }]
}' >"$work/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"

archive=$out/kubelet-guard.oci.tar
det_tar -C "$work/layout" -cf "$archive" oci-layout index.json blobs

# The SBOM: the crates compiled into the binary (normal dependencies, no build or dev ones) and
# the Debian packages whose libraries rootfs.sh copied, as pkg:deb purls so scanners match them
# (the image has no package database for them to read).
cargo cyclonedx --format json --spec-version 1.5 --no-build-deps \
  --override-filename kubelet-guard.sbom >/dev/null
mv kubelet-guard.sbom.json "$work/crates.cdx.json"
debs='[]'
for library in $(cd "$work/rootfs" && find lib lib64 -type f | LC_ALL=C sort); do
  # dpkg records the path ldd names (/lib, before the /usr merge), not always the file's own.
  package=$(dpkg -S "/$library" 2>/dev/null | head -1 | cut -d: -f1) ||
    package=$(dpkg -S "$(readlink -f "/$library")" | head -1 | cut -d: -f1)
  deb_version=$(dpkg-query -W -f '${Version}' "$package")
  arch=$(dpkg-query -W -f '${Architecture}' "$package")
  debs=$(jq -c --arg p "$package" --arg v "$deb_version" --arg a "$arch" --arg f "/$library" \
    --arg distro "debian-$(cut -d. -f1 /etc/debian_version)" \
    'if any(.[]; .name == $p) then . else . + [{
       type: "library", "bom-ref": ("pkg:deb/debian/" + $p + "@" + $v + "?arch=" + $a),
       name: $p, version: $v,
       purl: ("pkg:deb/debian/" + $p + "@" + $v + "?arch=" + $a + "&distro=" + $distro)
     }] end' <<<"$debs")
done
jq --argjson debs "$debs" --arg manifest "$manifest_digest" \
  '.components += $debs
   | .metadata.properties = (.metadata.properties // []) + [{name: "oci:manifest-digest", value: $manifest}]' \
  "$work/crates.cdx.json" >"$out/kubelet-guard.cdx.json"

echo "$archive: $(size "$archive") bytes, manifest $manifest_digest"
echo "layer $layer_digest: $layer_size bytes (gzip), $(du -sb "$work/rootfs" | cut -f1) unpacked:"
tar -tvzf "$work/layout/blobs/sha256/${layer_digest#sha256:}" | awk '{ print "  " $1, $2, $3, $6 }'
echo "$out/kubelet-guard.cdx.json: $(jq '.components | length' "$out/kubelet-guard.cdx.json") components"
rm -rf "$work"
