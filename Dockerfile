# Konnaxion Releases: one image, every consumer (`kxr serve --only ROLE` picks one).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY events ./events
COPY projections ./projections
COPY services ./services
RUN pip install --no-cache-dir .
USER 65534
ENTRYPOINT ["kxr"]
CMD ["serve"]
