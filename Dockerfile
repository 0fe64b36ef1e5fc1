# The controller's container image: a release build of `instance-registrar` in a minimal, non-root
# runtime image (distroless: glibc, libgcc, CA certificates and nothing else: no shell, no package
# manager).
#
#   docker build -t instance-registrar:0.1.0 \
#     --build-arg SOURCE=https://github.com/<org>/instance-registrar --build-arg REVISION=$(git rev-parse HEAD) .
#
# It needs no BuildKit features: dependencies are cached as an image layer, so CI caches that
# export layers (registry, gha) keep them too.
#
# Without a registry (or with your own base images): BUILDER_IMAGE and RUNTIME_IMAGE name the two
# base images, and the `prebuilt` target takes a binary built outside instead of building one (a
# build context holding just `instance-registrar`, built on the runtime image's Debian release
# or an older one, so that it finds its glibc). The pod tests build it that way with buildah, on
# a runtime image made from Debian packages (tests/node/images.sh):
#
#   buildah bud --target prebuilt --build-arg RUNTIME_IMAGE=localhost/base:bookworm \
#     -f Dockerfile -t instance-registrar:dev <directory holding instance-registrar>

# The builder's Rust matches the toolchain the project is developed and tested with; its Debian
# (bookworm) matches the runtime image's (debian12), so the binary finds the glibc it was linked
# against. Pin by digest as well (rust:...@sha256:...) where the registry is reachable.
ARG RUST_VERSION=1.95.0
# The two base images, when not the defaults below (a mirror, or images made locally): the
# builder's (Rust on Debian bookworm) and the runtime's (glibc, libgcc_s, CA certificates and a
# non-root user 65532, no shell needed).
ARG BUILDER_IMAGE=
ARG RUNTIME_IMAGE=

# `--target prebuilt`: the runtime image with a binary built outside, from the build context
# (a directory holding just `instance-registrar`). Before the builder stage, so that builders that
# go through every stage up to the target need no Rust image for it. Its settings are the same as
# the default target's below.
FROM ${RUNTIME_IMAGE:-gcr.io/distroless/cc-debian12:nonroot} AS prebuilt
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="instance-registrar" \
      org.opencontainers.image.description="Kubernetes controller that registers Linux hosts with an AWS OpsWorks stack" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY instance-registrar /instance-registrar
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/instance-registrar"]
CMD ["run"]

FROM ${BUILDER_IMAGE:-docker.io/library/rust:${RUST_VERSION}-slim-bookworm} AS builder
WORKDIR /build

# 1. Dependencies only. The workspace's manifests and lock file, with stub sources for the
#    controller's own targets: this layer (most of the build time: the AWS SDK crates) is rebuilt
#    only when the manifests or the lock file change. Every workspace member's manifest must be
#    here for the workspace to load; the members other than the controller are not built, so
#    their sources are not needed.
COPY Cargo.toml Cargo.lock ./
COPY tests/opsworks-endpoint/Cargo.toml tests/opsworks-endpoint/Cargo.toml
COPY tests/local-env/Cargo.toml tests/local-env/Cargo.toml
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin instance-registrar \
 && cargo clean --release -p instance-registrar \
 && rm -rf src

# 2. The controller. `touch` and the `cargo clean -p` above both make sure the stubs' build is not
#    mistaken for an up-to-date one (COPY keeps the build context's modification times).
COPY src ./src
RUN touch src/lib.rs src/main.rs \
 && cargo build --release --locked --bin instance-registrar \
 && install -D -m 0755 target/release/instance-registrar /out/instance-registrar

# The runtime image (the default target): distroless "cc" has the C runtime the binary links
# against (glibc, libgcc_s, libm) and CA certificates for TLS to AWS and the API server; its
# "nonroot" variant runs as 65532 by default, stated again below so that a policy checking the
# image config sees it.
FROM ${RUNTIME_IMAGE:-gcr.io/distroless/cc-debian12:nonroot}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="instance-registrar" \
      org.opencontainers.image.description="Kubernetes controller that registers Linux hosts with an AWS OpsWorks stack" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

COPY --from=builder /out/instance-registrar /instance-registrar

USER 65532:65532
# 8080: Prometheus metrics (/metrics); 8081: probes (/healthz, /readyz).
EXPOSE 8080 8081
ENTRYPOINT ["/instance-registrar"]
CMD ["run"]
