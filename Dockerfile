# syntax=docker/dockerfile:1
# The Tidings gateway node: `docker build -t tidings .` (the default target, `runtime`).
# docker-compose.yml runs three of these behind nginx; `--profile loadtest` adds locust (target `loadtest`).

ARG PYTHON=python:3.11-slim

# --- build: wheels of tidings and every dependency (no compiler needed in the runtime image) ---------
FROM ${PYTHON} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server server
COPY client client
COPY web web
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- loadtest: the same package plus locust and the load-test code ----------------------------------
FROM ${PYTHON} AS loadtest
RUN useradd --system --uid 10001 --home-dir /app --create-home --shell /usr/sbin/nologin tidings
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --find-links /wheels "tidings[loadtest]" && rm -rf /wheels
WORKDIR /app
COPY --chown=tidings:tidings loadtest loadtest
USER tidings
EXPOSE 8089

# --- runtime: one gateway node, unprivileged -------------------------------------------------------
FROM ${PYTHON} AS runtime
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tidings
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# A node writes nothing to local disk (DESIGN.md guarantee 7): it runs from any directory, read-only.
WORKDIR /tmp
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TIDINGS_LOG_FORMAT=json
USER tidings
EXPOSE 8000
# /healthz: the process answers. Readiness (Redis reachable, not draining) is /readyz, for the balancer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# SIGTERM drains: clients are told to reconnect elsewhere in batches, then the node exits
# within TIDINGS_DRAIN_TIMEOUT (give `docker stop` a longer grace period, see docker-compose.yml).
STOPSIGNAL SIGTERM
CMD ["tidings", "serve", "--host", "0.0.0.0", "--port", "8000"]
