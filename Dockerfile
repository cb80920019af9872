# One image for the servers and for Locust. Two build stages compile: `build` any wheel that needs
# a compiler, `native` the native tier's two servers. The final stage gets the wheels and the two
# binaries only, no build tools and no toolchains, and runs as a non-root user.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY servers ./servers
COPY loadtest ./loadtest
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# go-nethttp and rust-hyper (servers/native/) and the rate driver (loadtest/rate/), compiled
# offline from Debian's Go and Rust toolchains and crates (and gcc): the packages `make
# system-deps` installs (`make -s native-packages` lists them), on the final stage's Debian, so the binaries find the same libc there. cgo and
# rustc's linker want the C compiler of build-essential.
FROM python:3.11-slim AS native
WORKDIR /src
COPY Makefile ./
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && apt-get install -y --no-install-recommends $(make -s native-packages) \
 && rm -rf /var/lib/apt/lists/*
COPY servers/__init__.py ./servers/
COPY servers/native ./servers/native
COPY loadtest/rate/stackbench_rate.c ./loadtest/rate/
RUN python -m servers.native --install-to /native

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 stackbench
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The native servers and the rate driver, prebuilt: `stackbench serve go-nethttp` execs
# /opt/stackbench/native/go-nethttp as it is (servers/native/__init__.py), with no toolchain.
COPY --from=native /native /opt/stackbench/native
ENV STACKBENCH_NATIVE_PREBUILT=/opt/stackbench/native
# Locust takes a file path: the scenario files, beside the installed package they import.
COPY loadtest/locustfiles /app/locustfiles
# The Grafana provisioning and dashboards, for Kubernetes (deploy/kubernetes/grafana.yaml).
COPY dashboards/grafana /app/dashboards/grafana
USER stackbench
WORKDIR /home/stackbench
EXPOSE 8080 8089 9646
CMD ["stackbench", "--help"]
