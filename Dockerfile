# syntax=docker/dockerfile:1
# certrotor as a static (musl) binary on distroless/static, running as 65532 (nonroot) with no
# shell in the image. Build from the repository root:
#   docker build -t certrotor:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/certrotor:0.1.0 --push .
# Each platform compiles natively (under emulation when it is not the build host's).

ARG RUST_VERSION=1.89
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# musl-gcc compiles aws-lc-rs's C code for the static target; cmake is aws-lc-sys's fallback build.
# Versions come from the pinned Debian release of the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools cmake \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cache mounts keep crates and build output between builds; the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
    && export "CC_${target//-/_}=musl-gcc" \
    && CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked --bin certrotor --target "$target" \
    && install -D -m 0755 "target/$target/release/certrotor" /out/certrotor

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="certrotor" \
      org.opencontainers.image.description="Kubernetes operator that keeps SaaS tenant certificates (PingOne AIC, Prisma Access CIE Device-ID) valid, installed and rotated" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"
COPY --from=build /out/certrotor /usr/local/bin/certrotor
USER 65532:65532
# /metrics, /healthz, /readyz (CERTROTOR_METRICS_ADDR, default 0.0.0.0:8080).
EXPOSE 8080
# Kubernetes probes /healthz and /readyz; the image has no shell or client to run a HEALTHCHECK.
# checkov:skip=CKV_DOCKER_2:Kubernetes liveness and readiness probes replace a Docker HEALTHCHECK
ENTRYPOINT ["/usr/local/bin/certrotor"]
CMD ["run"]
