# The relay in one container: gunicorn with the TLS worker, the outbox on the /data volume.
# docs/deployment.md says how to run it; tests/test_deploy.py runs its CMD and HEALTHCHECK.
FROM python:3.11-slim-bookworm

# A fixed uid, so that mounted certificates and the volume can be given to it on the host
# (numeric in USER below: Kubernetes' runAsNonRoot can only check a number).
# /data exists before VOLUME and is the user's: a new named volume takes that ownership.
RUN groupadd --system --gid 10001 quay \
    && useradd --system --uid 10001 --gid quay --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin quay \
    && mkdir /data \
    && chown quay:quay /data

WORKDIR /app

# Dependencies in a layer of their own: rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# .dockerignore lets through only what runs. The code stays root's: the service can
# write nothing but its outbox under /data.
COPY . .

ENV PORT=8443 DATABASE_URL=sqlite:////data/quay-dispatch.sqlite3 PYTHONUNBUFFERED=1
EXPOSE 8443
VOLUME /data
USER 10001:10001

# The start period covers gunicorn creating or upgrading the outbox's schema.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "quay_dispatch.healthcheck"]

# gunicorn's graceful shutdown: workers finish their requests within graceful_timeout
# (20 s in gunicorn.conf.py), so stop with `docker stop -t 30`.
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
