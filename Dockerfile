# plasma: event push server (SSE + gRPC on one port), the `plasma-push` distribution built
# from this source tree.
#   docker build -t plasma .
#   docker run -p 8080:8080 plasma                      # mock source, no Redis needed
#   docker compose up -d                                # with Redis (docker-compose.yml)
# Every setting is an environment variable; `docker run --rm plasma plasma --help` lists them.

# Pinned to an exact release tag; pin by digest too (python@sha256:...) where your registry allows.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: a virtualenv holding plasma and its dependencies ----------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN python -m venv /opt/plasma \
 && /opt/plasma/bin/pip install .

# --- runtime: the virtualenv and a non-root user, nothing else ---------------------------------
FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin plasma
COPY --from=build /opt/plasma /opt/plasma
ENV PATH=/opt/plasma/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Settings and their defaults (see `plasma --help` and README.md "Config").
ENV PLASMA_PORT=8080 \
    PLASMA_DEBUG=false \
    PLASMA_ORIGIN="" \
    PLASMA_SSE_RETRY=2000 \
    PLASMA_SSE_EVENTQUERY=eventType \
    PLASMA_SUBSCRIBER_TYPE=mock \
    PLASMA_SUBSCRIBER_REDIS_ADDR=localhost:6379 \
    PLASMA_SUBSCRIBER_REDIS_DB=0 \
    PLASMA_SUBSCRIBER_REDIS_CHANNELS="" \
    PLASMA_SUBSCRIBER_REDIS_OVER_MAX_RETRY_BEHAVIOR=alive \
    PLASMA_SUBSCRIBER_REDIS_TIMEOUT=1s \
    PLASMA_SUBSCRIBER_REDIS_RETRY_INTERVAL=5s \
    PLASMA_ERROR_LOG_OUT=stdout \
    PLASMA_ERROR_LOG_LEVEL=info \
    PLASMA_ACCESS_LOG_OUT=stdout \
    PLASMA_ACCESS_LOG_LEVEL=info \
    PLASMA_METRICS_TYPE="" \
    PLASMA_METRICS_INTERVAL=10s \
    PLASMA_WORKERS=1
# Not set here, set them at run time: PLASMA_SUBSCRIBER_REDIS_PASSWORD (a secret),
# PLASMA_TLS_CERT_FILE and PLASMA_TLS_KEY_FILE (mount the files), PLASMA_METRICS_LOG_* and
# PLASMA_METRICS_SYSLOG_* (the metrics sender).

USER plasma
WORKDIR /tmp
EXPOSE 8080
STOPSIGNAL SIGTERM
# No curl in slim images: Python's urllib asks /hc (200 healthy, 500 when Redis is unreachable).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, ssl, urllib.request as u; tls = bool(os.environ.get('PLASMA_TLS_CERT_FILE')); c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; u.urlopen(('https' if tls else 'http') + '://127.0.0.1:' + (os.environ.get('PLASMA_PORT') or '8080') + '/hc', timeout=4, context=c if tls else None)"]
CMD ["plasma"]
