# The image the Helm chart runs: the router, Ray Serve and the bundled model.
#   CPU (default):  docker build -t acr:dev .
#   CUDA:           docker build -t acr:cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
# The package needs Python >= 3.11: use an Ubuntu 24.04 CUDA base (Python 3.12), not 22.04.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# Must equal the chart's `rayVersion` (KubeRay starts `ray` from this image).
ARG RAY_VERSION=2.60.0
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1

# CUDA bases ship no Python; slim bases already have it. KubeRay's default probes run
# `wget` inside the Ray containers, which slim and CUDA bases lack.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget ca-certificates \
 && if ! command -v python3 >/dev/null; then \
      apt-get install -y --no-install-recommends python3 python3-pip python3-venv; \
    fi \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the index that matches the base (CPU or CUDA wheels).
RUN pip install --index-url ${TORCH_INDEX_URL} torch==${TORCH_VERSION} \
 && pip install "ray[serve]==${RAY_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md config.example.yaml ./
COPY router ./router
COPY policies ./policies
COPY difficulty ./difficulty
COPY backends ./backends
COPY tasks ./tasks
# The bundled model's weights live in backends/bundled/model and install with the package.
# Checked from / so that the installed package, not the source tree, answers.
RUN pip install . \
 && cd / && python -c "from backends.bundled.paths import bundled_model_path as p; \
assert (p() / 'game24' / 'model.safetensors').is_file() and '/site-packages/' in str(p()), p(); print(p())"

RUN useradd --create-home --uid 10001 ray
USER 10001
EXPOSE 8000
CMD ["acr", "serve", "--host", "0.0.0.0", "--config", "/app/config.example.yaml"]
