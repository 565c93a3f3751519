"""``harken-train localize``: where in time and frequency a clip departs from normal, drawn
from an AEGAN-AD run (Jiang et al.): the query spectrogram, its reconstruction, the mean
training spectrogram and the pixel-level difference of the reconstruction from that mean."""

from __future__ import annotations

from pathlib import Path

from harken.agent.features import LogMelExtractor
from harken.agent.sources.wavio import read_wav
from harken.training.data.windows import fit_to_window
from harken.training.method import Localisable
from harken.training.runs import RunError, read_run


def localize(run_dir: Path, clip: Path, out: Path) -> Path:
    from harken.training.methods import method_class
    info = read_run(run_dir)
    cls = method_class(info.method)
    if not issubclass(cls, Localisable):
        raise RunError(f"{run_dir}: a {info.method} run cannot localise; train aegan-ad")
    method = cls.load(run_dir)
    audio, _ = read_wav(clip, method.spec.sample_rate)
    logmel = fit_to_window(LogMelExtractor(method.spec)(audio), method.spec)
    maps = method.localization_maps(logmel)
    _plot(maps, out, f"{clip.name}  ({info.machine}, {info.method})",
          method.spec.frame_seconds)
    return out


def _plot(maps: dict, out: Path, title: str, frame_seconds: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = (("query", "query (dB)"), ("reconstruction", "reconstruction (dB)"),
              ("mean", "mean training spectrogram (dB)"),
              ("difference", "|reconstruction - mean| (dB)"))
    seconds = maps["query"].shape[1] * frame_seconds
    lo = min(maps[k].min() for k in ("query", "reconstruction", "mean"))
    hi = max(maps[k].max() for k in ("query", "reconstruction", "mean"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 10), sharex=True)
    for ax, (key, label) in zip(axes, panels):
        kw = {"cmap": "magma"} if key == "difference" else {"vmin": lo, "vmax": hi}
        im = ax.imshow(maps[key], origin="lower", aspect="auto",
                       extent=(0, seconds, 0, maps[key].shape[0]), **kw)
        ax.set(ylabel="mel bin", title=label)
        fig.colorbar(im, ax=ax, pad=0.01)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
