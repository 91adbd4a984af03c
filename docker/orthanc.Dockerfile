# A development Orthanc for the `pacs` compose profile, from Debian's packages (orthanc +
# orthanc-dicomweb), so it builds wherever Debian's archive is reachable.
#
# Not a hospital PACS: one user (PACS_USER / PACS_PASSWORD from the environment, expanded by
# Orthanc at start), plain HTTP inside the compose network, ports published on loopback only
# (under host networking: ORTHANC_* in orthanc.json, set by docker/compose.host-network.yml).
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
# ORTHANC_HTTP_PORT: see orthanc.json.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${ORTHANC_HTTP_PORT:-8042}"]
CMD ["Orthanc", "/etc/cspine-orthanc/orthanc.json"]
LABEL org.opencontainers.image.title="cervical-fracture-triage-orthanc" \
      org.opencontainers.image.description="Development Orthanc (Debian packages) for the PACS profiles"
