# Konnaxion Releases: one image for every process of compose.yaml (the entrypoint is `kxr`):
# each consumer (`serve --only ROLE`), the dashboard (`ui`) and simulated runtimes (`runtime simulate`).
FROM python:3.11-slim
WORKDIR /app
# the locked dependencies first (their own layer: rebuilt only when the lock changes), every one
# pinned with its hashes (requirements/base.txt, made by `bash .ci/lock`); then the project, with no
# resolution of its own
COPY requirements/base.txt ./requirements/base.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/base.txt
COPY pyproject.toml README.md LICENSE ./
COPY events ./events
COPY projections ./projections
COPY services ./services
RUN pip install --no-cache-dir --no-deps . \
    && mkdir -p /data/kx /data/service && chown 65534:65534 /data/kx /data/service
# /data/kx: the NATS credentials (compose mounts each container's own file there, and kx-data whole
# only into the one-shots that write it); /data/service: the service signing key, on a volume only
# the consumers mount (they share one key; its public half, service-keys.json, is all that the
# dashboard and runtimes get). Both owned by the image's user, so fresh named volumes are too.
ENV KX_DATA_DIR=/data/kx
USER 65534
ENTRYPOINT ["kxr"]
CMD ["serve"]
