# sessiongate's container image: built in a full Rust image, run from distroless (glibc,
# CA certificates, no shell, no package manager) as the nonroot user.
#   docker build -t registry.example.com/sessiongate:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them. Cargo reads every target the
# manifest names (the binary, the benches, the integration tests) before it builds any, so
# each gets a stub here; only the binary is built. tests/docker/check.sh runs these steps in
# CI, which has no Docker engine: a build that needs a file not copied fails there.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY third_party ./third_party
RUN mkdir -p src benches/loadgen tests/it \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in loadgen/main memory micro; do echo 'fn main() {}' > benches/$b.rs; done \
    && echo 'fn main() {}' > tests/it/main.rs \
    && cargo build --release --locked --bin sessiongate
COPY src ./src
# COPY keeps the files' times, which may be older than the stubs': touch, or Cargo keeps the stub.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin sessiongate \
    && strip target/release/sessiongate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sessiongate /usr/local/bin/sessiongate
USER 65532:65532
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/sessiongate"]
CMD ["serve"]
