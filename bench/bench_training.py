"""Training throughput of the edge scorers, per device: seconds per epoch at the default
settings (the dense AE over one standard-corpus machine type's vectors, the classifiers
over their windows_per_epoch), on CPU and, where torch sees one, on a CUDA GPU in the
same run. Random inputs of the real shapes: the step cost does not depend on the data.

With ``--nproc N``: training across processes (training/distributed.py) against one
process, side by side in one run: ``harken-train train`` of mobilenetv2-dual on one machine
type, the plain single process and ``--nproc N`` alternated (``--repeats`` times each), the
training loop's samples per second (from run.json's history: the whole batch's samples,
validation and feature extraction left out) and the command's wall time. On a machine
with few cores (2: two 1-thread processes against one 2-thread process) this is no GPU
speed-up: the ratio says what processes instead of threads give on those cores, and
the scaling efficiency (N processes against N times a lone 1-thread process) what the
distributed path costs; on a multi-GPU box the ratio is the speed-up (records as
training-distributed).

    .venv/bin/python bench/bench_training.py [--steps 6] [--name training-gpu]
    .venv/bin/python bench/bench_training.py --nproc 2 [--corpus DIR] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
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


# what --nproc trains: the default settings but for fewer epochs (and this type's clips
# only, so that feature extraction stays short); every epoch draws windows_per_epoch
DISTRIBUTED_SETTINGS = ["other_clips=0", "patience=100"]
MULTI_GPU_COMMAND = ("harken-train train --method mobilenetv2-dual --data CORPUS --out RUNS "
                     "--nproc NUMBER_OF_GPUS")


def train_once(corpus: Path, out: Path, epochs: int, nproc: int | None,
               threads: int | None = None) -> dict:
    """One ``harken-train train`` (a fresh process, as a user runs it): its wall time and
    its run's training-loop throughput (median over the epochs after the first)."""
    extra = [f"threads={threads}"] if threads else []
    sets = [a for s in [*DISTRIBUTED_SETTINGS, f"epochs={epochs}", *extra] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "harken.training", "train", "--method", "mobilenetv2-dual",
           "--data", str(corpus), "--machines", "fan", "--out", str(out), "--quiet", "--force",
           *sets, *(["--nproc", str(nproc)] if nproc else [])]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    hist = json.loads((out / "fan" / "run.json").read_text())["history"]
    rates = hist["samples_per_second"][1:] or hist["samples_per_second"]
    return {"wall_s": wall, "samples_per_second": statistics.median(rates),
            "loop_s": sum(hist["epoch_seconds"]), "epochs": len(hist["train_loss"]),
            "world_size": (hist.get("distributed") or {}).get("world_size", 1)}


def distributed_main(args: argparse.Namespace) -> None:
    from harken.training.distributed import cpu_cores
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            from harken.training.synth.corpus import synthesize
            corpus = synthesize(Path(tmp) / "corpus", "small", seed=0, machines=("fan",),
                                progress=False)
        # one process as a user runs it (torch's threads over every core), one process of
        # one thread (what each of N processes would do alone: N times it is the ideal),
        # and N processes of cores / N threads each
        arms = {"one": (None, None), "one_thread": (None, 1), "many": (args.nproc, None)}
        runs: dict[str, list[dict]] = {k: [] for k in arms}
        for i in range(args.repeats):           # alternated: the machine's load hits each
            for key, (nproc, threads) in arms.items():
                row = train_once(Path(corpus), Path(tmp) / f"{key}{i}", args.epochs, nproc, threads)
                runs[key].append(row)
                print(f"{key:<11} {row['samples_per_second']:>7.0f} samples/s  "
                      f"{row['wall_s']:>6.1f} s wall")
    med = {k: {f: statistics.median(r[f] for r in rows) for f in ("samples_per_second", "wall_s",
                                                                   "loop_s")}
           for k, rows in runs.items()}
    figures = {"torch": torch.__version__, "cores": cpu_cores(), "nproc": args.nproc,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "backend": "nccl" if torch.cuda.is_available() else "gloo",
               "method": "mobilenetv2-dual", "machine_type": "fan",
               "corpus": "small (synthesized, fan only)" if args.corpus is None else str(args.corpus),
               "settings": [*DISTRIBUTED_SETTINGS, f"epochs={args.epochs}"],
               "repeats": args.repeats, "runs": runs, "median": med,
               "samples_per_second_ratio": med["many"]["samples_per_second"]
               / med["one"]["samples_per_second"],
               "wall_ratio": med["many"]["wall_s"] / med["one"]["wall_s"],
               # against N lone 1-thread processes' sum: 1.0 = the distributed path costs nothing
               "scaling_efficiency": med["many"]["samples_per_second"]
               / (args.nproc * med["one_thread"]["samples_per_second"]),
               "threads_per_process": max(1, cpu_cores() // args.nproc),
               "multi_gpu_command": MULTI_GPU_COMMAND}
    print(f"{args.nproc} processes / 1: {figures['samples_per_second_ratio']:.2f} x the samples/s, "
          f"{figures['wall_ratio']:.2f} x the wall time; scaling efficiency "
          f"{figures['scaling_efficiency']:.2f}")
    path = record(args.name or "training-distributed", f"bench/bench_training.py --nproc {args.nproc}",
                  figures)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--name",
                   help="record under bench/results/NAME.json (default training, or "
                        "training-distributed with --nproc; e.g. training-gpu on a GPU "
                        "machine, so the 2-core record is kept beside it)")
    p.add_argument("--nproc", type=int,
                   help="compare training on this many processes with one (see above)")
    p.add_argument("--corpus", type=Path,
                   help="with --nproc: a corpus with a fan type (default: the small corpus, "
                        "synthesized for the run)")
    p.add_argument("--epochs", type=int, default=3, help="with --nproc: epochs per run")
    p.add_argument("--repeats", type=int, default=2, help="with --nproc: runs of each")
    args = p.parse_args()
    if args.nproc is not None:
        if args.nproc < 2:
            p.error("--nproc: compare 2 or more processes with one")
        return distributed_main(args)
    args.name = args.name or "training"
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
