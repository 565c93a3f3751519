"""Training throughput of the edge scorers, per device: seconds per epoch at the default
settings (the dense AE over one standard-corpus machine type's vectors, the classifiers
over their windows_per_epoch), on CPU and, where torch sees one, on a CUDA GPU in the
same run. Random inputs of the real shapes: the step cost does not depend on the data.

    .venv/bin/python bench/bench_training.py [--steps 6] [--name training-gpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import record  # noqa: E402
from harken.training.autoencoder import AeConfig  # noqa: E402
from harken.training.classifier import ClassifierConfig, ClassifierNet, ContrastiveHeads  # noqa: E402
from harken.training.models.dense_ae import DenseAE, per_sample_mse  # noqa: E402

# vectors per epoch of one standard-corpus machine type: 198 fit clips x 309 vectors
AE_VECTORS_PER_EPOCH = 198 * 309


def step_seconds(device: torch.device, kind: str, steps: int) -> tuple[float, int]:
    torch.manual_seed(0)
    if kind == "ae":
        cfg = AeConfig()
        net = DenseAE().to(device)
        x = torch.randn(cfg.batch_size, 640, device=device)
        params = list(net.parameters())

        def loss():
            return per_sample_mse(x, net(x)).mean()
    else:
        cfg = ClassifierConfig()
        net = ClassifierNet(20, cfg.width, head=cfg.head, embedding_dim=cfg.embedding_dim).to(
            device).to(memory_format=torch.channels_last)
        heads = ContrastiveHeads(128, net.cnn.embedding_dim).to(device) if kind == "contrastive" \
            else None
        x = torch.randn(cfg.batch_size, 1, 128, 64, device=device).contiguous(
            memory_format=torch.channels_last)
        y = torch.randint(0, 20, (cfg.batch_size,), device=device)
        params = list(net.parameters()) + (list(heads.parameters()) if heads else [])
        from harken.training.classifier import ClassifierMethod
        method = ClassifierMethod()

        def loss():
            pooled = net.pooled(x)
            logits, _ = net.classify(pooled)
            total = F.cross_entropy(logits.float(), y)
            if heads is not None:
                total = total + method._contrastive_terms(net, heads, x, pooled)
            return total
    opt = torch.optim.Adam(params)
    amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            value = loss()
        opt.zero_grad()
        value.backward()
        opt.step()
    for _ in range(2):
        step()
    if amp:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if amp:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps, cfg.batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--name", default="training",
                   help="record under bench/results/NAME.json (e.g. training-gpu on a GPU "
                        "machine, so the 2-core record is kept beside it)")
    args = p.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    per_epoch = {"ae": AE_VECTORS_PER_EPOCH, "mobilenetv2": ClassifierConfig().windows_per_epoch,
                 "contrastive": ClassifierConfig().windows_per_epoch}
    figures: dict = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                     "methods": {}}
    for kind, samples in per_epoch.items():
        row = {"samples_per_epoch": samples}
        for device in devices:
            seconds, batch = step_seconds(device, kind, args.steps)
            row[device.type] = {"samples_per_second": batch / seconds,
                                "seconds_per_epoch": samples / (batch / seconds)}
            print(f"{kind:<12} {device.type:<5} {batch / seconds:>9.0f} samples/s  "
                  f"{row[device.type]['seconds_per_epoch']:>7.1f} s/epoch")
        if "cuda" in row:
            row["cpu_over_gpu"] = row["cpu"]["seconds_per_epoch"] / row["cuda"]["seconds_per_epoch"]
        figures["methods"][kind] = row
    print(f"wrote {record(args.name, 'bench/bench_training.py', figures)}")


if __name__ == "__main__":
    main()
