# Multi-stage build of mqdb. Both stages install unixODBC and the ODBC drivers with the
# same script CI runs (scripts/setup.sh --packages), so the image and CI stay in step.
# scripts/image-test.sh builds this file with podman, with RUNTIME_BASE set to a locally made
# bookworm and the build stage replaced by the binary built on the host.
ARG RUNTIME_BASE=debian:bookworm-slim

FROM rust:1-bookworm AS build
WORKDIR /src
COPY scripts/setup.sh scripts/setup.sh
RUN scripts/setup.sh --packages
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY benches benches
RUN cargo build --release --locked --bin mqdb

FROM ${RUNTIME_BASE}
COPY scripts/setup.sh /usr/local/lib/mqdb/setup.sh
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null \
    && /usr/local/lib/mqdb/setup.sh --packages \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/mqdb --create-home mqdb \
    && mkdir -p /etc/mqdb
COPY --from=build /src/target/release/mqdb /usr/local/bin/mqdb
USER mqdb
WORKDIR /var/lib/mqdb
VOLUME ["/var/lib/mqdb"]
ENV MQDB_CONFIG=/etc/mqdb/mqdb.yaml
# The state store (dead letters) belongs on the volume: state: sqlite:///var/lib/mqdb/state.db
# The health check asks /health, so the config needs http: { listen: 0.0.0.0:9464 }.
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["/usr/local/bin/mqdb", "health"]
ENTRYPOINT ["/usr/local/bin/mqdb"]
CMD ["run"]
