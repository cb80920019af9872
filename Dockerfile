# One image for the three servers and for Locust. Build stage compiles any wheel that needs a
# compiler; the final stage gets the wheels only, no build tools, and runs as a non-root user.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY servers ./servers
COPY loadtest ./loadtest
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 stackbench
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# Locust takes a file path: the scenario files, beside the installed package they import.
COPY loadtest/locustfiles /app/locustfiles
# The Grafana provisioning and dashboards, for Kubernetes (deploy/kubernetes/grafana.yaml).
COPY dashboards/grafana /app/dashboards/grafana
USER stackbench
WORKDIR /home/stackbench
EXPOSE 8080 8089 9646
CMD ["stackbench", "--help"]
