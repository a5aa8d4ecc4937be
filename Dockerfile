# Loan default risk prediction service: Flask + gunicorn + CatBoost, with the model bundle baked in.
#
# Build from a context made by tasks/release/build_context.py (prepare_build_context): it holds this file,
# serving/, tools/ (the build stage's prune.py), bundle/ (the model bundle) and wheels/ (every wheel of
# serving/requirements.txt, downloaded on the host: nothing is fetched during the build).
#
#   docker build --build-arg BASE_IMAGE=python:3.11-slim --build-arg MODEL_NAME=loan-risk \
#       --build-arg MODEL_VERSION=3 --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t loan-risk:3 CONTEXT
#
# Works on the official slim image and on a debootstrap Debian base (python3 but no python; PEP 668
# forbids system pip installs): everything goes into the virtual environment /opt/venv.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY wheels/ /wheels/
COPY serving/requirements.txt /tmp/requirements.txt
# --no-deps: requirements.txt is the complete closure; catboost's plotting/training extras stay out.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --no-index --find-links /wheels --no-deps -r /tmp/requirements.txt
# Per-build values come only after the environment, so its layer is cached across releases and pushed once.
# The build id labels the images of this stage that are the build's own, so a release can remove them.
ARG BUILD_ID=unknown
LABEL ai.loanrisk.build.id="${BUILD_ID}"
COPY tools/ /tmp/tools/
COPY serving/ /app/serving/
COPY bundle/ /app/bundle/
# Drop installers, tests and the SciPy parts CatBoost never imports, then prove the app still serves the bundle.
RUN chmod -R a+rX /app \
 && cd /app \
 && /opt/venv/bin/python /tmp/tools/prune.py --bundle /app/bundle --app-root /app \
 && /opt/venv/bin/python -m compileall -q /app/serving

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
# The builder reuses this layer while the environment's files are the same (it compares their contents).
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ARG MODEL_NAME=loan-risk
ARG MODEL_VERSION=unknown
ARG GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="${MODEL_NAME}" \
      org.opencontainers.image.description="Loan default risk prediction service (${MODEL_NAME} version ${MODEL_VERSION})" \
      org.opencontainers.image.version="${MODEL_VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      ai.loanrisk.model.name="${MODEL_NAME}" \
      ai.loanrisk.model.version="${MODEL_VERSION}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOANRISK_BUNDLE_DIR=/app/bundle \
    LOANRISK_BIND=0.0.0.0:8080 \
    LOANRISK_WORKERS=2 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    MODEL_NAME=${MODEL_NAME} \
    MODEL_VERSION=${MODEL_VERSION}
WORKDIR /app
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=3 \
    CMD ["python3", "-m", "serving.healthcheck"]
CMD ["gunicorn", "--config", "/app/serving/gunicorn_conf.py"]
