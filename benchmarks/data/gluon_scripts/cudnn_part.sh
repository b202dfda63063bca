#!/bin/bash
# Copies the wheel parts carried in this call (the folder holding this script) into /tmp/cudnn_parts on the GPU
# machine; /tmp outlives the call while the machine stays warm. Usage (repo root): bash .gpu/cudnn/callN/part.sh
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p /tmp/cudnn_parts || exit 1
cp "$here"/cudnn_wheels.tar.part-* /tmp/cudnn_parts/ || exit 1
echo "[cudnn parts] now in /tmp/cudnn_parts: $(cd /tmp/cudnn_parts && ls | tr '\n' ' ')" >&2
