# x86-64 image with CUDA, PyTorch and TensorRT from NVIDIA's NGC PyTorch container
# (24.08: PyTorch 2.5, TensorRT 10.3, CUDA 12.6, Python 3.10).
# Build: docker build -t vtpdeploy:x86 .
# Run:   docker run --rm --gpus all -v "$PWD/runs:/work/runs" vtpdeploy:x86 export runs/quickstart --fp16 --trt
FROM nvcr.io/nvidia/pytorch:24.08-py3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/vtpdeploy
COPY pyproject.toml README.md ./
COPY vtpdeploy ./vtpdeploy

# Keep the container's own torch/torchvision/tensorrt: the constraint file pins what is installed,
# so pip resolves vtpdeploy's other dependencies around them instead of replacing them.
RUN pip list --format=freeze | grep -iE '^(torch|torchvision|tensorrt)==' > /tmp/constraints.txt \
    && pip install --constraint /tmp/constraints.txt ".[openvino]" \
    && rm /tmp/constraints.txt \
    && vtpdeploy --help > /dev/null

WORKDIR /work
ENTRYPOINT ["vtpdeploy"]
CMD ["--help"]
