# One image for every container of the demo fleet in docker-compose.yml: the hive
# (rbee-hive), the keeper (rbee) and test-worker, a small worker process used by the tests.
#
#   docker build -t rbee .
#   docker run --rm rbee rbee --help

# Build stage: the release binaries. protoc is not needed: the protocol compiles in pure Rust.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && cp target/release/rbee-hive target/release/rbee target/release/test-worker /out/

# Runtime stage: the three binaries on a slim Debian, run as an unprivileged user.
FROM debian:bookworm-slim
RUN useradd --create-home --uid 10001 rbee
COPY --from=build /out/ /usr/local/bin/
USER rbee
WORKDIR /home/rbee
# The default address is loopback only; in a container the hive must listen on every
# interface to be reachable from the other containers of the compose network.
ENV RBEE_HIVE_LISTEN=0.0.0.0:7835
EXPOSE 7835
CMD ["rbee-hive"]
