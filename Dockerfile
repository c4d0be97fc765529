# The costline image: the collector by default (`costline serve`); any other command with `docker run ... <cmd>`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY costline ./costline
COPY router ./router
COPY collector ./collector
COPY dashboards ./dashboards
COPY proxy ./proxy
RUN pip install --no-cache-dir --prefix=/install ".[lake]"

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --create-home --home-dir /home/costline costline \
    && mkdir -p /data && chown costline:costline /data
USER costline
WORKDIR /data
# Inside a container the collector must listen beyond loopback for the other services to reach it.
ENV PYTHONUNBUFFERED=1 \
    COSTLINE_COLLECTOR_HOST=0.0.0.0 \
    COSTLINE_LEDGER=/data/costline.duckdb \
    COSTLINE_USAGE_DB=/data/usage.sqlite
EXPOSE 4318 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/readyz', timeout=3)"]
ENTRYPOINT ["costline"]
CMD ["serve"]
