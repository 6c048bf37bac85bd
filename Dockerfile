# One image for every role: api (default CMD), worker, scheduler, and the
# operator's one-off commands (db upgrade, account create, instance add, image import).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IMAGESVC_DATA_DIR=/var/lib/imagesvc

# qemu-img (package qemu-utils) copies qcow2 disks; raw disks fall back to Python.
RUN apt-get update \
    && apt-get install -y --no-install-recommends qemu-utils \
    && rm -rf /var/lib/apt/lists/*

# Non-root runtime user owning the data dir (image store, beat schedule).
RUN groupadd --gid 10001 imagesvc \
    && useradd --uid 10001 --gid imagesvc --no-log-init --no-create-home \
        --home-dir /var/lib/imagesvc --shell /usr/sbin/nologin imagesvc \
    && install -d -o imagesvc -g imagesvc -m 0750 /var/lib/imagesvc

WORKDIR /src
COPY pyproject.toml README.md ./
COPY api/ api/
COPY workers/ workers/
COPY models/ models/
COPY imagesvc/ imagesvc/
RUN pip install --no-cache-dir . \
    && rm -rf /src

WORKDIR /var/lib/imagesvc
USER 10001:10001

EXPOSE 8080
CMD ["imagesvc", "api", "--host", "0.0.0.0", "--port", "8080"]
