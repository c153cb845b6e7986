"""init_averaging's plot, drawn from JSON arguments when first asked for (``core.renders``): no torch here."""

from __future__ import annotations

from core.plots import new_figure, to_png


def forward_moments(curves: dict[str, list[float]], widths: list[int], activation: str, distribution: str) -> bytes:
    """Each mean's measured forward second moment by layer, on a log scale, against the ideal 1."""
    fig, ax = new_figure()
    layers = list(range(len(widths)))
    for mean, moments in curves.items():
        ax.plot(layers, [1.0] + moments, "o-", label=mean)
    ax.axhline(1.0, color="gray", ls=":")
    ax.set_yscale("log")
    ax.set_xticks(layers, [f"{i}\n({w})" for i, w in zip(layers, widths)])
    ax.set_xlabel("layer (width)")
    ax.set_ylabel("E[h²] / E[x²] (Monte Carlo)")
    ax.set_title(f"Forward second moment, {activation} activations, {distribution} init")
    ax.legend(title="mean of fans")
    return to_png(fig)
