# varmor: one image for every role, for those with a container engine. `make image`
# (varmor/dev/image.py) builds the image the tests check, with no engine and reproducibly:
# Debian bookworm, the same parser, user, entrypoint and command. Keep the two in step.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints ./constraints
COPY varmor ./varmor
COPY rules ./rules
# The dependencies at the versions `make image` installs.
RUN pip wheel --no-cache-dir --constraint constraints/image.txt --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# apparmor_parser (Debian's 3.0.8) compiles profiles on the node; the pinned kernel
# feature ABI ships inside the varmor package (varmor/data/apparmor-features).
RUN apt-get update \
 && apt-get install -y --no-install-recommends apparmor \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# The agent runs as root with CAP_MAC_ADMIN only (set by the chart, never privileged); webhook, leader
# and cleanup run as this user (with a home, as in `make image`'s) with no capabilities.
RUN useradd --no-log-init --uid 65532 --user-group --home-dir /home/nonroot --create-home \
      --shell /usr/sbin/nologin nonroot
USER 65532:65532
ENTRYPOINT ["varmor"]
CMD ["run"]
