# varmor: one image for every role. Building it is not exercised by the test suite
# (no container engine on the development machines); keep it simple.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY varmor ./varmor
COPY rules ./rules
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# apparmor_parser (Debian's 3.0.8) compiles profiles on the node; the pinned kernel
# feature ABI ships inside the varmor package (varmor/data/apparmor-features).
RUN apt-get update \
 && apt-get install -y --no-install-recommends apparmor \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The agent runs as root with CAP_MAC_ADMIN only (set by the chart, never privileged); webhook, leader
# and cleanup run as this user with no capabilities.
USER 65532:65532
ENTRYPOINT ["varmor"]
CMD ["run"]
