# syntax=docker/dockerfile:1
# cliniko-gateway: build in the official Rust image, run the binary alone in distroless.
#   docker build -t cliniko-gateway .
#   docker compose -f deploy/compose.yaml up

FROM rust:1.95-slim-bookworm AS build
# jemalloc (the global allocator) is built from source by tikv-jemalloc-sys and needs make.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The production image has no Cliniko stand-in (`sandbox` feature: rcgen, tempfile);
# deploy/compose.yaml builds a dev image with FEATURES=otel,sandbox for its demo.
ARG FEATURES=otel
# Manifests first: the dependency layer is rebuilt only when they change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/it/main.rs \
    && cargo build --release --locked --no-default-features --features "$FEATURES" \
    && rm -rf src tests
COPY src ./src
COPY tests ./tests
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --no-default-features --features "$FEATURES" \
       --bin cliniko-gateway \
    && strip target/release/cliniko-gateway \
    && mkdir -p /out/state /out/sandbox \
    && cp target/release/cliniko-gateway /out/cliniko-gateway

# distroless/cc: glibc + libgcc (aws-lc needs them), CA certificates, no shell, no package
# manager; user 65532 "nonroot". Outbound TLS trusts the bundled Mozilla roots anyway.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/cliniko-gateway /usr/local/bin/cliniko-gateway
# A writable, nonroot-owned directory: compose's named volume for the key store starts as a
# copy of it (root filesystems stay read-only).
COPY --from=build --chown=65532:65532 /out/state /var/lib/cliniko-gateway
COPY --from=build --chown=65532:65532 /out/sandbox /var/lib/sandbox
USER 65532:65532
EXPOSE 8080 9901
# No shell or curl in distroless: the binary probes itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/cliniko-gateway", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/cliniko-gateway"]
CMD ["serve", "--config", "/etc/cliniko-gateway/config/gateway.toml"]
