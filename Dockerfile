# syntax=docker/dockerfile:1
#
# kubelet-guard container image, for Docker users.
#
#   docker build -t kubelet-guard .
#
# The same image as deploy/image/build.sh (which needs no container engine and no base image):
# the build stage compiles the `dist` profile (release + thin LTO, one codegen unit, symbols
# stripped) from Cargo.lock with --locked and assembles the root filesystem with the same script,
# deploy/image/rootfs.sh (the binary, the C runtime it links, /etc/passwd and /etc/group, a
# sticky /tmp); the runtime stage is FROM scratch and copies it. No shell, no package manager,
# no package database, and no runtime base image to pin.
#
# Pinning: the build stage's image is pinned by tag. Its digest, which CI should pass so that a
# rebuild of the same commit uses the same compiler and C runtime, is
# `docker buildx imagetools inspect rust:1.95-slim-bookworm` (Digest:):
#   docker build --build-arg RUST_IMAGE=rust:1.95-slim-bookworm@sha256:<digest> .
# It must stay Debian 12 (bookworm) like the machines deploy/image/build.sh runs on, or the two
# images carry different glibc builds.

ARG RUST_IMAGE=rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependencies come from Cargo.lock only (--locked), and build paths are remapped so they do not
# leak into the binary: the same sources, lock file and base image give the same binary
# (deploy/image/build.sh remaps the same way).
ENV CARGO_TERM_COLOR=never \
    RUSTFLAGS="--remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo"
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# `demo` embeds examples/embedded/policy.yaml with include_str!, and Cargo refuses a manifest
# whose [[bench]] targets are missing, so both directories come along (the build compiles neither
# the benches nor the tests).
COPY examples ./examples
COPY benches ./benches
COPY deploy/image/rootfs.sh ./deploy/image/rootfs.sh
# The registry and target caches survive between builds (BuildKit); the root filesystem is
# assembled out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin kubelet-guard \
    && deploy/image/rootfs.sh target/dist/kubelet-guard /rootfs

FROM scratch
# VERSION is Cargo.toml's (tests/image.rs keeps them equal); CI sets the others:
#   --build-arg REVISION=$(git rev-parse HEAD) \
#   --build-arg CREATED=$(date -u -d @$(git log -1 --format=%ct) +%Y-%m-%dT%H:%M:%SZ) \
#   --build-arg SOURCE_URL=https://… (the repository has no canonical URL yet)
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
ARG SOURCE_URL=
LABEL org.opencontainers.image.title="kubelet-guard" \
      org.opencontainers.image.description="A node-local authorizing reverse proxy for the kubelet API" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE_URL}"
COPY --from=build /rootfs/ /
# nonroot. The DaemonSet in deploy/ overrides this with runAsUser 0 and every capability dropped,
# so that the kubelet's serving key and the node's PKI stay readable by root only (deploy/README.md,
# "Why the guard runs as root").
USER 65532:65532
# No subcommand here: the manifest's args start with `serve`, and `docker run IMAGE demo` works.
ENTRYPOINT ["/kubelet-guard"]
