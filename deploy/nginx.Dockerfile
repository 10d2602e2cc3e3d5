# nginx at the edge: TLS termination in front of the gateway, SSE-safe.
ARG BASE_IMAGE=crucible-base:latest
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
COPY deploy/nginx.conf /etc/nginx/nginx.conf
CMD ["nginx", "-g", "daemon off;"]
