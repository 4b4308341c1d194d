# syntax=docker/dockerfile:1
#
# AudioHook gateway image.
#   docker build -t audiohook-gateway .
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:9090:9090 --env-file .env \
#       -e AUDIOHOOK_REDIS_URL=redis://REDIS_HOST:6379/0 audiohook-gateway
# (.env from .env.example works as is: the image listens on all interfaces, which a container
# needs for its published ports; -p 127.0.0.1:... keeps them on the host's loopback.) There is
# no Redis in the image: without AUDIOHOOK_REDIS_URL the gateway exits with one line saying so.
# `docker compose up --build` runs the gateway with Redis, Prometheus and Grafana.
#
# Two stages: the builder installs the package into a virtual environment from binary wheels
# (compiling its per-frame modules, see below); the final image copies only that environment
# onto a clean slim base (no compiler, no pip cache, no sources). One uvicorn worker per
# container; scale with replicas.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies in their own layer, rebuilt only when pyproject.toml changes. All of them ship
# binary wheels for linux amd64 and arm64; --only-binary makes a missing wheel fail the build
# instead of silently needing a compiler.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write('\n'.join(deps))" \
 && pip install --no-cache-dir --only-binary=:all: -r /tmp/requirements.txt

COPY README.md setup.py ./
# app/ without app/bench: .dockerignore leaves the benchmarks out of the context.
COPY app ./app
# The modules every audio frame passes through are compiled with mypyc (setup.py; README
# "Compiled build"), in a build environment of their own that sees the dependencies above:
# neither the compiler nor mypy reaches the image. --build-arg AUDIOHOOK_COMPILE=0 builds the
# same gateway as pure Python. The compiler needs the Python headers: the official images
# have them; a distribution's Python gets them from its python3-dev package.
# pip byte-compiles the package, so the read-only container never needs to write .pyc files.
# The compiler is not pinned: it only runs here, and a pin breaks with each Debian point release.
ARG AUDIOHOOK_COMPILE=1
# hadolint ignore=DL3008
RUN if [ "$AUDIOHOOK_COMPILE" != 1 ]; then pip install --no-cache-dir --no-deps . ; exit; fi \
 && headers="$(python -c "import os, sysconfig; print(os.path.join(sysconfig.get_path('include'), 'Python.h'))")" \
 && if [ -f "$headers" ]; then python_dev=""; else python_dev="python3-dev"; fi \
 && apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev ${python_dev:+"$python_dev"} \
 && python -m venv /opt/build \
 && python -c "import sysconfig; print(sysconfig.get_path('purelib'))" \
        > "$(/opt/build/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")/runtime.pth" \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['compile']))" > /tmp/compile.txt \
 && /opt/build/bin/pip install --no-cache-dir --only-binary=:all: -r /tmp/compile.txt \
 && AUDIOHOOK_COMPILE=1 /opt/build/bin/pip wheel --no-cache-dir --no-build-isolation --no-deps -w /tmp/wheel . \
 && pip install --no-cache-dir --no-deps /tmp/wheel/*.whl \
 && python -P -c "import app.protocol.session as m; assert m.__file__.endswith('.so'), m.__file__"

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="audiohook-gateway" \
      org.opencontainers.image.description="Genesys Cloud AudioHook gateway: call audio and events to Redis Streams" \
      org.opencontainers.image.licenses="Apache-2.0"

# Defaults for running behind a TLS-terminating ingress or load balancer:
# - both listeners on all interfaces; metrics, /healthz and /readyz on their own port, which
#   the ingress does not expose;
# - X-Forwarded-For honoured only from private-network proxies (the ingress controller): the
#   IP allowlist checks the rightmost hop outside those ranges. Narrow
#   AUDIOHOOK_TRUSTED_PROXIES to your proxies' addresses where you can.
# There is no embedded Redis in the image: set AUDIOHOOK_REDIS_URL. An env file naming no
# AUDIOHOOK_HOST keeps these (the package's own default, for a laptop, is 127.0.0.1).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AUDIOHOOK_HOST=0.0.0.0 \
    AUDIOHOOK_PORT=8080 \
    AUDIOHOOK_METRICS_HOST=0.0.0.0 \
    AUDIOHOOK_METRICS_PORT=9090 \
    AUDIOHOOK_TRUSTED_PROXIES='["10.0.0.0/8","172.16.0.0/12","192.168.0.0/16","fc00::/7"]'

# Fixed ids so that Kubernetes can check runAsNonRoot (deploy/kubernetes uses 10001).
RUN groupadd --system --gid 10001 audiohook \
 && useradd --system --uid 10001 --gid audiohook --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin audiohook

COPY --from=builder /opt/venv /opt/venv

# A working directory the user can write (relative paths such as `consume --output-dir
# recordings` land here), unless the container runs with a read-only root file system.
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/audiohook
WORKDIR /var/lib/audiohook

USER 10001:10001
EXPOSE 8080 9090

# Checks what a client reaches: /healthz of the metrics listener (or the main one when
# AUDIOHOOK_METRICS_PORT=0) and a TCP connection to the AudioHook listener, both on the
# container's own address, not its loopback: a listener bound to 127.0.0.1 is unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["audiohook-gateway", "healthcheck"]

# SIGTERM starts the graceful drain (AUDIOHOOK_DRAIN_GRACE_SECONDS); give `docker stop` a
# longer timeout than the drain, e.g. `docker stop -t 45`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["audiohook-gateway"]
CMD ["serve"]
