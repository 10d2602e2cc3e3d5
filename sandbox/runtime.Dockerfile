# The Docker backend's runtime image, where a registry is reachable. Without one, use
# `crucible sandbox build-image` (debootstrap + docker import) for the same contents.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 nodejs gcc g++ libc6-dev \
 && rm -rf /var/lib/apt/lists/*
USER 65534:65534
