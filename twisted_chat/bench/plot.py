"""The benchmark's picture: deliveries/s and p99 latency vs offered rate, ours vs bare.

Needs matplotlib (``pip install 'twisted-chat[bench]'``).
"""


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the cluster scenario is two set-ups of one server kind: its figures are
    # in the report, not drawn
    scenarios = {name: sc for name, sc in results["scenarios"].items()
                 if not sc.get("cluster")}
    if not scenarios:
        return False
    fig, axes = plt.subplots(2, len(scenarios), figsize=(5 * len(scenarios), 7), squeeze=False)
    styles = {"ours": ("tab:blue", "o-"), "metrics": ("tab:green", "d-."),
              "bare": ("tab:gray", "s--"), "irc": ("tab:orange", "v-"),
              "ws": ("tab:purple", "P-")}
    for col, (name, sc) in enumerate(scenarios.items()):
        top, bottom = axes[0][col], axes[1][col]
        if not sc.get("sweep", True):
            _bars(top, bottom, sc, styles)
            continue
        for kind, r in sc["results"].items():
            steps = r.get("steps") or []
            if not steps:
                continue
            color, style = styles.get(kind, ("tab:red", "^-"))
            x = [s["offered"] / 1e6 for s in steps]
            top.plot(x, [s["deliveries_per_s"] / 1e6 for s in steps], style, color=color,
                     label=kind)
            bottom.plot(x, [s["p99_ms"] for s in steps], style, color=color, label=kind)
            for s, xi in zip(steps, x):
                if not s["ok"]:
                    top.plot([xi], [s["deliveries_per_s"] / 1e6], "x", color="red", ms=10)
        top.set_title(f"{sc['members']} members, {sc['senders']} senders")
        top.set_ylabel("delivered (M lines/s)")
        bottom.set_ylabel("p99 latency (ms)")
        bottom.set_xlabel("offered (M deliveries/s)")
        bottom.axhline(250, color="red", lw=0.8, ls=":")
        bottom.set_yscale("log")
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
            ax.legend()
    fig.suptitle("twisted-chat fan-out vs bare LineReceiver broadcast (same run)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _bars(top, bottom, sc, styles):
    """A fixed-rate scenario: one bar per server for deliveries/s and p99."""
    kinds = [k for k, r in sc["results"].items() if r.get("steps")]
    last = [sc["results"][k]["steps"][-1] for k in kinds]
    colors = [styles.get(k, ("tab:red",))[0] for k in kinds]
    top.bar(kinds, [s["deliveries_per_s"] / 1e6 for s in last], color=colors)
    top.set_title(f"{sc['members']} members, {sc['rate']:.0f} msgs/s")
    top.set_ylabel("delivered (M lines/s)")
    bottom.bar(kinds, [s["p99_ms"] for s in last], color=colors)
    bottom.set_ylabel("p99 latency (ms)")
    bottom.axhline(sc.get("max_p99_ms", 250), color="red", lw=0.8, ls=":")
    for ax, values, fmt in ((top, [100 * s["delivery"] for s in last], "{:.1f}%"),
                            (bottom, [s["p99_ms"] for s in last], "{:.0f} ms")):
        for x, v in enumerate(values):
            ax.annotate(fmt.format(v), (x, 0), xytext=(0, 3), textcoords="offset points",
                        ha="center", fontsize=8, color="white")
        ax.grid(True, axis="y", alpha=0.3)
