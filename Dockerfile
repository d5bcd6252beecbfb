# Build stage: a release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
RUN cargo build --release --locked

# Runtime stage: the binary alone, as a non-root user, with the database on a volume.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/fluence-gateway gateway \
 && mkdir -p /var/lib/fluence-gateway \
 && chown gateway /var/lib/fluence-gateway
COPY --from=build /src/target/release/fluence-gateway /usr/local/bin/fluence-gateway
USER gateway
WORKDIR /var/lib/fluence-gateway
VOLUME ["/var/lib/fluence-gateway"]
ENV GATEWAY__SERVER__LISTEN=0.0.0.0:8080 \
    GATEWAY__DATABASE__URL=sqlite:///var/lib/fluence-gateway/gateway.db \
    GATEWAY__LOG__FORMAT=json
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/fluence-gateway"]
CMD ["serve"]
