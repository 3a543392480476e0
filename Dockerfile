# syntax=docker/dockerfile:1
# One image, one binary, every role: `ordermesh serve user|order|payment|audit|gateway`,
# `ordermesh tables create`. Build: docker build -t ordermesh:0.1.0 .

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Caches keep the registry and target/ between builds; the binary is copied out of the
# cache mount in the same step. Only a C compiler is needed (aws-lc), no protoc.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release -p ordermesh --locked \
    && install -D -m 0755 target/release/ordermesh /out/ordermesh

# glibc, libgcc and CA certificates (for DynamoDB over HTTPS); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/ordermesh /usr/local/bin/ordermesh
# gRPC, plaintext gRPC health, metrics (services); HTTP (gateway).
EXPOSE 50051 50060 9090 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ordermesh"]
CMD ["--help"]
