# syntax=docker/dockerfile:1
# dcr-stream: `dcr-stream run` as an unprivileged user, on a read-only root filesystem.
#   docker build -t dcr-stream:0.1.0 .
# The builder makes the project's wheel and installs it with the versions pinned in constraints.txt
# into a venv; the final image is python:3.11-slim plus that venv, and no pip, compiler or source.
# Set PYTHON_IMAGE to a digest (python:3.11-slim@sha256:...) to pin the base image too.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/dcr-stream
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY stream ./stream
# Bytecode is compiled here, and checked by hash-less "unchecked" mode at run time: the image never
# changes, and a read-only filesystem could not take a recompiled file anyway.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/dcr-stream/bin/pip install --no-compile --constraint constraints.txt /wheels/*.whl \
 && /opt/dcr-stream/bin/pip uninstall --yes pip setuptools \
 && /opt/dcr-stream/bin/python -m compileall -q --invalidation-mode unchecked-hash /opt/dcr-stream

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="dcr-stream" \
      org.opencontainers.image.description="Kafka to Truecaller Dynamic Call Records API bridge" \
      org.opencontainers.image.licenses="Apache-2.0"
# The base image's own installers go too; then the service's user, uid/gid 10001 (the Helm chart's
# runAsUser/runAsGroup), with no home and no shell.
RUN python -m pip uninstall --yes --disable-pip-version-check pip setuptools wheel \
 && groupadd --system --gid 10001 dcr \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin dcr
COPY --from=builder /opt/dcr-stream /opt/dcr-stream
# Nothing is written outside /tmp at run time: no bytecode, and HOME points at /tmp for any library
# that wants a cache directory. Logs go unbuffered to stdout.
ENV PATH=/opt/dcr-stream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["dcr-stream", "run"]
