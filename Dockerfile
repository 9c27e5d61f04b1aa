# turnout's container image: the gateway on 0.0.0.0:8400, as a non-root user, with a health check.
#
#   docker build -t turnout .                              # gateway only: point it at runtimes
#   docker build -t turnout --build-arg EMBEDDED=true .    # plus the in-process engine and the
#                                                          # default model (compiles llama.cpp)
# Configuration: mount turnout.yaml at /etc/turnout/turnout.yaml, or set TURNOUT_<SECTION>__<KEY>
# variables (TURNOUT_SERVER__ADMIN_KEY, TURNOUT_STORAGE__DATABASE_URL...). See deploy/README.md.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG EMBEDDED=false
# a C/C++ toolchain only for the embedded extra (llama-cpp-python compiles llama.cpp)
RUN if [ "$EMBEDDED" = "true" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends build-essential=12.9 cmake=3.25.* \
        && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY pyproject.toml README.md LICENSE* ./
COPY turnout ./turnout
RUN EXTRAS="otel" \
    && if [ "$EMBEDDED" = "true" ]; then EXTRAS="otel,embedded"; fi \
    && python -m venv /opt/turnout \
    && /opt/turnout/bin/pip install --no-cache-dir ".[${EXTRAS}]"

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="turnout" \
      org.opencontainers.image.description="A local-first LLM gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
# libgomp: llama.cpp's OpenMP runtime (harmless without the embedded extra)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.2.* \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 turnout \
    && useradd --system --uid 10001 --gid turnout --home-dir /var/lib/turnout --create-home turnout
COPY --from=build /opt/turnout /opt/turnout
ENV PATH=/opt/turnout/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TURNOUT_SERVER__HOST=0.0.0.0 \
    TURNOUT_SERVER__PORT=8400
USER 10001:10001
WORKDIR /var/lib/turnout
EXPOSE 8400
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8400/health', timeout=4)"]
ENTRYPOINT ["turnout"]
CMD ["serve", "--log-format", "json"]
