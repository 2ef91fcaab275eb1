# sessiongate's container image: built in a full Rust image, run from distroless (glibc,
# CA certificates, no shell, no package manager) as the nonroot user.
#   docker build -t registry.example.com/sessiongate:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/loadgen.rs \
    && cargo build --release --locked --bin sessiongate || true
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin sessiongate \
    && strip target/release/sessiongate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/sessiongate /usr/local/bin/sessiongate
USER 65532:65532
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/sessiongate"]
CMD ["serve"]
