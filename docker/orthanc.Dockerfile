# syntax=docker/dockerfile:1
# A development Orthanc for the `pacs` compose profile, from Debian's packages (orthanc +
# orthanc-dicomweb), so it builds wherever Debian's archive is reachable.
#
# Not a hospital PACS: one user (PACS_USER / PACS_PASSWORD from the environment, expanded by
# Orthanc at start), plain HTTP inside the compose network, ports published on loopback only.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       orthanc orthanc-dicomweb \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/orthanc/db /etc/cspine-orthanc \
    && chown -R orthanc:orthanc /var/lib/orthanc
# ${PACS_USER} / ${PACS_PASSWORD} in it are expanded by Orthanc from the environment.
COPY docker/orthanc.json /etc/cspine-orthanc/orthanc.json
USER orthanc
VOLUME ["/var/lib/orthanc/db"]
EXPOSE 8042 4242
# The HTTP port answers (401 without credentials is fine: the server is up).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8042"]
CMD ["Orthanc", "/etc/cspine-orthanc/orthanc.json"]
