"""Plot a calibration profile (answer recall per layer and kernel set) and print its table.

    python benchmarks/plot_calibration.py ilre_engine/profiles/gemma3-270m.json \
        benchmarks/results/2026-11-25-cpu/calibration_gemma3-270m.png

Needs matplotlib (``pip install "ilre[bench]"``). The chosen layer is marked. The Markdown
table printed has, per layer, its best kernels and their recall overall and by task family,
and the recall of the default multi-kernel set and of the single kernel 1.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ilre_engine.profiles import Profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("png")
    args = parser.parse_args()
    profile = Profile.load(args.profile)
    layers = sorted(int(layer) for layer in profile.recall)
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=120)
    kernel_sets = profile.settings["kernel_sets"]
    for kernels in kernel_sets:
        values = [profile.recall[str(layer)][kernels] for layer in layers]
        style = "-o" if "," in kernels else ":."
        axes.plot(layers, values, style, label=f"kernels {kernels}", markersize=4)
    best = [max(profile.recall[str(layer)].values()) for layer in layers]
    axes.plot(layers, best, "-", color="black", linewidth=2.5, alpha=0.35, label="best kernels")
    axes.axvline(profile.layer, color="red", linestyle="--", label=f"chosen l_R = {profile.layer}")
    settings = profile.settings
    axes.set(
        xlabel="layer",
        ylabel="answer recall",
        ylim=(0, 1.02),
        xticks=layers,
        title=(
            f"{profile.model_name}: recall by layer (lengths {settings['lengths']}, "
            f"budgets {settings['budgets']}, {settings['samples']} samples per family)"
        ),
    )
    axes.title.set_fontsize(9)
    axes.legend(fontsize=7, ncol=2, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.png)
    print_table(profile)


def print_table(profile: Profile) -> None:
    families = profile.settings["families"]
    header = ["layer", "best kernels", "recall", "1,5,9,17", "1", *families]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for layer in sorted(profile.recall, key=int):
        detail, by_kernels = profile.details[layer], profile.recall[layer]
        best = detail["kernels"]
        cells = [
            f"**{layer}**" if int(layer) == profile.layer else layer,
            best,
            f"{by_kernels[best]:.3f}",
            f"{by_kernels.get('1,5,9,17', float('nan')):.3f}",
            f"{by_kernels.get('1', float('nan')):.3f}",
            *(f"{detail[f'family={family}']:.2f}" for family in families),
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
