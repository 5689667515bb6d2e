FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY receiver ./receiver
COPY worker ./worker
COPY cli ./cli
RUN pip install --no-cache-dir . && useradd --create-home gate
USER gate
ENTRYPOINT ["mlflow-gate"]
