# syntax=docker/dockerfile:1
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Dependencies first, for layer caching; then the source.
COPY pyproject.toml README.md ./
RUN mkdir service && touch service/__init__.py && pip install . && pip uninstall -y algoways-store
COPY service ./service
RUN pip install --no-deps .

FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --home-dir /app algoways
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOST=0.0.0.0 PORT=8000
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations
COPY service ./service
# Bytecode now: with PYTHONDONTWRITEBYTECODE every start would compile the source first (0.8 s).
RUN python -m compileall -q service migrations && mkdir -p /app/data && chown algoways /app/data
ENV DATABASE_URL=sqlite+aiosqlite:////app/data/algoways.db
USER algoways
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\",\"8000\")}/health/live', timeout=2)" || exit 1
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve"]
