# syntax=docker/dockerfile:1
#
# kubelet-guard container image.
#
#   docker build -t kubelet-guard .
#
# Two stages: a pinned Rust toolchain builds the `dist` profile (release + thin LTO, one codegen
# unit, symbols stripped) from Cargo.lock with --locked; the runtime stage is distroless: no shell,
# no package manager, only the binary and the C runtime it links against.
#
# Pinning: both base images are pinned by tag here. CI should pin them by digest as well
# (`FROM rust:1.95-slim-bookworm@sha256:…`, `FROM gcr.io/distroless/cc-debian12:nonroot@sha256:…`)
# so a rebuild of the same commit uses the same bytes; a tag can move.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Dependencies come from Cargo.lock only (--locked), and build paths are remapped so they do not
# leak into the binary: the same sources, lock file and base image give the same binary.
ENV CARGO_TERM_COLOR=never \
    RUSTFLAGS="--remap-path-prefix=/src=. --remap-path-prefix=/usr/local/cargo=cargo"
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# `demo` embeds examples/embedded/policy.yaml with include_str!, and Cargo refuses a manifest
# whose [[bench]] targets are missing, so both directories come along (the build compiles neither
# the benches nor the tests).
COPY examples ./examples
COPY benches ./benches
# The registry and target caches survive between builds (BuildKit); the binary is copied out of
# the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin kubelet-guard \
    && install -D -m 0755 target/dist/kubelet-guard /out/kubelet-guard

# The binary links glibc, libm and libgcc_s dynamically (ring and std need no other library), so
# the runtime is distroless/cc (glibc + libgcc) rather than distroless/static. Both are Debian 12,
# like the builder, so the glibc versions match.
FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
# Set by CI: --build-arg SOURCE_URL=https://… (the repository has no canonical URL yet).
ARG SOURCE_URL=
LABEL org.opencontainers.image.title="kubelet-guard" \
      org.opencontainers.image.description="A node-local authorizing reverse proxy for the kubelet API" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE_URL}"
COPY --from=build /out/kubelet-guard /kubelet-guard
# The image runs as distroless' `nonroot` (65532) by default. The DaemonSet in deploy/ overrides
# this with runAsUser 0 and every capability dropped, only so it can read the kubelet's
# root-owned 0600 serving key (see the comment there).
USER 65532:65532
# No subcommand here: the manifest's args start with `serve`, and `docker run IMAGE demo` works.
ENTRYPOINT ["/kubelet-guard"]
