# One image for every WiPay service; docker-compose.yml picks the binary with `command:`.
#
#   docker build -t wipay:local .
#   docker run --rm wipay:local payctl --help
#   docker run --rm -it --network host wipay:local pos-terminal --help   # the reference clients are in it too

# ---- build ----------------------------------------------------------------------------------------
FROM swift:6.1-bookworm AS build

RUN apt-get update \
    && apt-get install -y --no-install-recommends libzmq3-dev libpq-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# All products, with the Swift runtime linked in statically; the C libraries stay dynamic.
RUN swift build -c release --static-swift-stdlib \
    && bin="$(swift build -c release --static-swift-stdlib --show-bin-path)" \
    && mkdir -p /out \
    && for p in bus ledger payment-router notifier pos-gateway phone-gateway payctl pos-terminal phone-wallet; do \
           install -m 755 "$bin/$p" /out/ || exit 1; \
       done \
    && if [ -x "$bin/paybench" ]; then install -m 755 "$bin/paybench" /out/; fi \
    && for r in "$bin"/*.resources; do [ -e "$r" ] && cp -R "$r" /out/ || true; done

# ---- runtime --------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# libzmq5 and libpq5 for the services; curl for the healthchecks; libxml2 in case Foundation's
# XML support is linked; ca-certificates for TLS to PostgreSQL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libzmq5 libpq5 ca-certificates curl libxml2 tzdata \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 wipay \
    && useradd --system --uid 10001 --gid wipay --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin wipay

COPY --from=build /out/ /usr/local/bin/

# Fail the image build, not the container start, if a shared library is missing.
RUN set -e; for b in /usr/local/bin/*; do \
        [ -f "$b" ] && [ -x "$b" ] || continue; \
        if ldd "$b" | grep -q 'not found'; then ldd "$b"; echo "missing libraries for $b" >&2; exit 1; fi; \
    done

ENV WIPAY_HTTP_HOST=0.0.0.0 \
    WIPAY_CONTROL_BIND=tcp://0.0.0.0:7000 \
    WIPAY_LOG_FORMAT=json

USER wipay:wipay
WORKDIR /tmp
# Gateways: 8080 (pos), 8090 (phone); other services: 9100 (metrics, healthz); control: 7000;
# the bus: 5550-5553.
EXPOSE 5550-5553 7000 8080 8090 9100
