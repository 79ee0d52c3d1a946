# midge in a container: `docker build -t midge .`
#
# Runs as the unprivileged user `midge` (uid 10001) with its store in the /data volume,
# and the config in contrib/docker/midge.toml: MQTT on 1883, MQTT over WebSocket on 8080,
# MQTT over TLS on 8883 once certificates are mounted (see that file), and the admin API
# and /metrics on 18083, all on every interface, with anonymous access off. Mount the
# user files it names (create them with `midge passwd`):
#
#   docker run --rm -v "$PWD/etc:/etc/midge/users" midge passwd -c /etc/midge/users/passwords alice
#   docker run --rm -v "$PWD/etc:/etc/midge/users" midge passwd -c /etc/midge/users/admin admin
#   docker run -d -p 1883:1883 -p 8080:8080 -p 18083:18083 \
#       -v "$PWD/etc:/etc/midge/users:ro" -v midge-data:/data midge

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The `dist` profile: no debug information, thin LTO (see Cargo.toml).
RUN cargo build --profile dist -p midge --locked \
    && install -D -m 0755 target/dist/midge /out/midge

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin midge \
    && mkdir -p /data /etc/midge/users \
    && chown midge:midge /data
COPY --from=build /out/midge /usr/local/bin/midge
COPY contrib/docker/midge.toml /etc/midge/midge.toml
USER midge
WORKDIR /data
VOLUME ["/data"]
EXPOSE 1883 8883 8080 18083
# SIGTERM (docker stop) shuts down gracefully: clients are told, the store is committed.
ENTRYPOINT ["/usr/local/bin/midge"]
CMD ["serve", "--config", "/etc/midge/midge.toml"]
