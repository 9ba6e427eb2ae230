# One image for all four service workers; docker-compose.yml picks the service by command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY edpo ./edpo
RUN pip install --no-cache-dir .
ENV EDPO_HOST=0.0.0.0 EDPO_RUN_DIR=/data
VOLUME /data
ENTRYPOINT []
CMD ["edpo", "worker", "order"]
