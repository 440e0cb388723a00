# Konnaxion Releases: one image for every process of compose.yaml (the entrypoint is `kxr`):
# each consumer (`serve --only ROLE`), the dashboard (`ui`) and simulated runtimes (`runtime simulate`).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY events ./events
COPY projections ./projections
COPY services ./services
RUN pip install --no-cache-dir . \
    && mkdir -p /data/kx && chown 65534:65534 /data/kx
# /data/kx holds the service signing key; compose mounts one volume there for every consumer,
# so they share a key and its public half (service-keys.json) for runtimes and auditors.
ENV KX_DATA_DIR=/data/kx
USER 65534
ENTRYPOINT ["kxr"]
CMD ["serve"]
