# The Weir image: one binary that runs the operator, job coordinators and
# workers (`weir operator|coordinator|worker`), and `weir run` too.
#
#   docker build -t weir .
#
# Base images are build arguments with public defaults. Where no registry
# is reachable, pass local ones and build the `prebuilt` target, which
# takes a `weir` built beforehand at target/image/weir (scripts/build-image
# does both). Both targets finish the same `runtime-base` stage.
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUNTIME_IMAGE} AS runtime-base
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="weir" \
      org.opencontainers.image.description="Kubernetes operator and runtime for exactly-once stream processing" \
      org.opencontainers.image.source="https://github.com/weir-dev/weir" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# Nothing is written inside the image: job data goes to volumes or object
# storage, so a read-only root filesystem works.
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/weir"]

# A binary built outside (stages before the target are all a builder
# without BuildKit runs, so this one comes before `builder`).
FROM runtime-base AS prebuilt
COPY target/image/weir /usr/local/bin/weir

FROM ${RUST_IMAGE} AS builder
# librdkafka (the Kafka connectors) is compiled by its own configure script
# and make; the slim Rust image lacks make.
RUN command -v make > /dev/null || { apt-get update && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*; }
WORKDIR /src
COPY . .
ARG REVISION=unknown
RUN WEIR_REVISION="${REVISION}" cargo build --release --locked --bin weir \
 && mkdir -p /out \
 && objcopy --strip-debug target/release/weir /out/weir

FROM runtime-base AS runtime
COPY --from=builder /out/weir /usr/local/bin/weir
