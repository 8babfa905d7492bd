# The projector and the read API share one image; docker-compose.yml picks the command.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROJECTOR_MIGRATIONS_DIR=/app/migrations

COPY pyproject.toml README.md ./
COPY projector ./projector
COPY api ./api
RUN pip install --no-cache-dir .
COPY migrations ./migrations

USER nobody
CMD ["projector", "run"]
