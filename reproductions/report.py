"""The report side of the reproductions: results files, aggregation over seeds, tables and plots.

* **results** — :func:`write_results` (``results.json`` with the keys every
  script shares — ``summary``, ``runs``, ``config``, ``paper``, ``machine`` —
  and ``results.md``), :func:`to_jsonable`, :func:`machine_description`;
* **aggregation** — :func:`aggregate` (mean and sample std over seeds of
  nested dicts), :func:`mean_std`;
* **tables** — :func:`pm`, :func:`markdown_table`, :func:`comparison_table`
  (our numbers beside the paper's);
* **plots** (matplotlib, Agg, written by the chief only) —
  :func:`plot_curves`, :func:`plot_bars`, :func:`plot_histograms`.

Every accuracy in results.json is a percentage.
"""

import dataclasses
import json
import numbers
import os

import keras
import numpy as np
import tensorflow as tf

from reproductions import common

# ============================================================================ results
def to_jsonable(obj):
    """Converts dataclasses, NumPy scalars/arrays, tuples and dict keys into JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, tf.Tensor):
        return to_jsonable(obj.numpy())
    return obj


def mean_std(values):
    """(mean, std) of numbers; std is the sample std (ddof=1), 0 for a single value."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_std needs at least one value.")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def aggregate(trees):
    """(means, stds) of a list of nested dicts with the same structure and numeric leaves.

    Used to average per-seed results. Lists of numbers are averaged element-wise;
    integers equal in every tree (batch sizes, update counts) stay integers;
    other leaves (text) are taken from the first tree (std None).
    """
    if not trees:
        raise ValueError("aggregate needs at least one result.")
    first = trees[0]
    if isinstance(first, dict):
        means, stds = {}, {}
        for key in first:
            means[key], stds[key] = aggregate([t[key] for t in trees])
        return means, stds
    if isinstance(first, (list, tuple)) and first and isinstance(first[0], numbers.Number):
        a = np.asarray(trees, dtype=np.float64)
        return a.mean(0).tolist(), (a.std(0, ddof=1) if len(trees) > 1 else np.zeros(a.shape[1])).tolist()
    if isinstance(first, numbers.Integral) and not isinstance(first, bool) and all(t == first for t in trees):
        return first, 0  # e.g. batch sizes, update counts: stay integers
    if isinstance(first, numbers.Number) and not isinstance(first, bool):
        return mean_std(trees)
    return first, None


def pm(mean, std=None, digits=2, scale=1.0):
    """"mean ± std" (or just the mean) as text.

    ``mean`` may also be a list of per-seed values: mean ± sample std, or just
    the value when there is one.
    """
    if isinstance(mean, (list, tuple, np.ndarray)):
        mean, std = mean_std(mean) if len(mean) > 1 else (float(mean[0]), None)
    if mean is None:
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def _cell(value, digits=2):
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header, rows, digits=2):
    """A GitHub markdown table; floats get ``digits`` decimals, None becomes "—"."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells, the header has {len(header)}.")
        lines.append("| " + " | ".join(_cell(c, digits) for c in row) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(rows, ours="ours", paper="paper", digits=2):
    """A markdown table of ``(quantity, our value, paper value[, note])`` rows.

    Our value may be a number, a list of per-seed numbers (shown as mean ± std)
    or text; the paper's a number, text, or None ("—", not reported).
    """
    header = ["quantity", ours, paper]
    has_note = any(len(r) > 3 for r in rows)
    if has_note:
        header.append("note")
    body = []
    for r in rows:
        ours_v = pm(r[1], digits=digits) if isinstance(r[1], (list, tuple)) else r[1]
        row = [r[0], ours_v, r[2]]
        if has_note:
            row.append(r[3] if len(r) > 3 else "")
        body.append(row)
    return markdown_table(header, body, digits)


# ============================================================================ verdicts
REPRODUCED, NOT_REPRODUCED, NOT_SEPARABLE, NOT_TESTED = (
    "reproduced", "not reproduced", "not separable at this size", "not tested")
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_SEPARABLE, NOT_TESTED)
"""Every claim of a paper gets one of these in its report's verdict table."""


@dataclasses.dataclass(frozen=True)
class Difference:
    """``a − b`` of two arms over seeds, and its spread.

    Attributes:
      diff: mean over seeds of ``a`` minus mean of ``b``.
      spread: sample std of that difference, ``√(std_a² + std_b²)`` (the arms' sample stds over seeds;
        :func:`paired_difference`: the std of the per-seed differences); ``None`` with fewer than 2 seeds in
        an arm (no spread can be measured).
      seeds: the smaller number of seeds of the two arms.
    """

    diff: float
    spread: float
    seeds: int

    @property
    def separable(self):
        """Whether the difference exceeds its spread (never with fewer than 2 seeds)."""
        return self.spread is not None and abs(self.diff) > self.spread

    def text(self, digits=2, unit=""):
        """"+1.23 ± 0.45" (difference ± spread), "+1.23 (1 seed)" without a spread."""
        d = f"{self.diff:+.{digits}f}{unit}"
        return f"{d} (1 seed)" if self.spread is None else f"{d} ± {self.spread:.{digits}f}{unit}"


def difference(a, b):
    """:class:`Difference` of per-seed values ``a`` and ``b`` (lists of numbers; NaN propagates)."""
    a, b = np.asarray(list(a), np.float64), np.asarray(list(b), np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("difference needs at least one value per arm.")
    n = int(min(a.size, b.size))
    spread = None if n < 2 else float(np.sqrt(a.var(ddof=1) + b.var(ddof=1)))
    return Difference(float(a.mean() - b.mean()), spread, n)


def paired_difference(a, b):
    """:class:`Difference` of two arms run in pairs, seed by seed (same initial weights and data order).

    The mean of the per-seed differences ``a[i] − b[i]`` ± their sample std: the spread of the arms'
    difference itself, not of the seeds (which :func:`difference` would count twice).
    """
    a, b = np.asarray(list(a), np.float64), np.asarray(list(b), np.float64)
    if a.size == 0 or a.size != b.size:
        raise ValueError(f"paired_difference needs one value per seed in both arms, got {a.size} and {b.size}.")
    d = a - b
    return Difference(float(d.mean()), None if d.size < 2 else float(d.std(ddof=1)), int(d.size))


def direction_verdict(d, sign=1):
    """Verdict on "a is larger than b" (``sign=1``) or "a is smaller than b" (``sign=-1``) from ``d = a − b``.

    Reproduced only when the difference has the claimed sign *and* exceeds its spread; the opposite sign
    beyond the spread is "not reproduced"; anything within the spread is "not separable at this size".
    """
    if not np.isfinite(d.diff) or not d.separable:
        return NOT_SEPARABLE
    return REPRODUCED if d.diff * sign > 0 else NOT_REPRODUCED


def equality_verdict(d, tolerance):
    """Verdict on "a matches b" (within ``tolerance``, in the units of ``d``).

    Reproduced when the difference and its spread are both within the tolerance (the experiment could have
    seen a difference of that size and did not); not reproduced when the difference exceeds both the
    tolerance and its spread; otherwise (a spread wider than the tolerance, or one seed) not separable.
    """
    if not np.isfinite(d.diff) or d.spread is None:
        return NOT_SEPARABLE
    if abs(d.diff) <= tolerance and d.spread <= tolerance:
        return REPRODUCED
    if abs(d.diff) > tolerance and d.separable:
        return NOT_REPRODUCED
    return NOT_SEPARABLE


def bound_verdict(d, tolerance):
    """Verdict on "a is at most ``tolerance`` above b" (e.g. a large batch's error no worse than the base's).

    Reproduced when even the difference plus its spread stays within the tolerance; not reproduced when
    the difference exceeds the tolerance and its spread; otherwise not separable.
    """
    if not np.isfinite(d.diff) or d.spread is None:
        return NOT_SEPARABLE
    if d.diff + d.spread <= tolerance:
        return REPRODUCED
    if d.diff > tolerance and d.separable:
        return NOT_REPRODUCED
    return NOT_SEPARABLE


def verdict_table(rows):
    """The markdown verdict table of ``(claim, paper, ours, verdict)`` rows (``verdict`` one of :data:`VERDICTS`)."""
    for row in rows:
        if row[3] not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {row[3]!r}.")
    return markdown_table(["claim", "paper", "ours (mean ± std over seeds; difference ± spread)", "verdict"],
                          [[c, p, o, f"**{v}**" if v == REPRODUCED else v] for c, p, o, v in rows])


VERDICT_RULE = (
    "A difference between two arms is the difference of their means over seeds ± its spread √(std_a² + std_b²) "
    "(sample stds over seeds). A claimed direction is **reproduced** only when the difference has that sign and "
    "exceeds its spread, *not reproduced* when the opposite sign exceeds it, and *not separable at this size* "
    "otherwise; a claimed equality is reproduced when the difference and its spread are both within the stated "
    "tolerance, not reproduced when the difference exceeds the tolerance and its spread; a claimed bound (\"no worse "
    "than\") is reproduced when the difference plus its spread stays within the tolerance, not reproduced when "
    "the difference exceeds the tolerance and its spread.")
"""The rule of :func:`direction_verdict` and :func:`equality_verdict`, in words, for every report."""


RESULTS_KEYS = ("summary", "runs", "config", "paper", "machine")
"""The top-level keys of every script's results.json (scripts may add their own studies after them)."""


def write_results(workdir, *, summary, runs, config, paper, markdown, **extra):
    """Writes ``results.json`` and ``results.md``; returns the results dict (on every worker).

    ``results.json`` holds :data:`RESULTS_KEYS` — ``summary`` (the paper's
    tables, our numbers), ``runs`` (the per-seed run records of
    :func:`reproductions.runner.fit_and_evaluate`), ``config``, ``paper`` (the
    published numbers or claims compared against) and ``machine`` — then
    ``extra``. Files are written by the chief only.
    """
    clash = set(extra) & set(RESULTS_KEYS)
    if clash:
        raise ValueError(f"extra results may not reuse the shared keys {sorted(clash)}.")
    results = to_jsonable({"summary": summary, "runs": runs, "config": config, "paper": paper,
                           "machine": machine_description(), **extra})
    if common.is_chief():
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, allow_nan=True)
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(markdown if markdown.endswith("\n") else markdown + "\n")
    return results


def machine_description():
    """One line naming the machine: CPU cores, accelerators, TF and Keras versions."""
    gpus = tf.config.list_physical_devices("GPU")
    accel = f"{len(gpus)} GPU" if gpus else "no GPU"
    return f"{os.cpu_count()} CPU cores, {accel}, TensorFlow {tf.__version__}, Keras {keras.__version__}"


# ============================================================================ plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    plt = _pyplot()
    if common.is_chief():
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(path, curves, *, xlabel, ylabel, title=None, logx=False, logy=False, vlines=(),
                right=None, right_ylabel=None):
    """Line plot of ``{label: (x, y)}`` (or ``(x, y, style_kwargs)``); returns ``path``.

    ``right`` holds further curves drawn against a second y axis labelled
    ``right_ylabel`` (e.g. loss on the left, accuracy on the right).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    handles = []
    for label, curve in curves.items():
        x, y, *style = curve
        handles += ax.plot(x, y, label=label, **(style[0] if style else {}))
    if right:
        ax2 = ax.twinx()
        for label, curve in right.items():
            x, y, *style = curve
            handles += ax2.plot(x, y, label=label, **(style[0] if style else {}))
        ax2.set_ylabel(right_ylabel or "")
    for v in vlines:
        ax.axvline(v, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8)
    return _save(fig, path)


def plot_bars(path, groups, *, ylabel, title=None, logy=False):
    """Grouped bars of ``{group: {series: value or (mean, std)}}``; returns ``path``."""
    plt = _pyplot()
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, s in enumerate(series):
        xs, hs, es = [], [], []
        for j, g in enumerate(groups.values()):
            if s in g:
                v = g[s]
                m, e = v if isinstance(v, (tuple, list)) else (v, 0.0)
                xs.append(j + (i - (len(series) - 1) / 2) * width)
                hs.append(m)
                es.append(e)
        ax.bar(xs, hs, width, yerr=es, capsize=3, label=s)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups))
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_histograms(path, histograms, *, xlabel, title=None, logy=True, density=True):
    """Step histograms of ``{label: (counts, edges)}`` (shared bins); returns ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, (counts, edges) in histograms.items():
        counts = np.asarray(counts, dtype=np.float64)
        edges = np.asarray(edges, dtype=np.float64)
        if density and counts.sum() > 0:
            counts = counts / (counts.sum() * np.diff(edges))
        ax.stairs(counts, edges, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density" if density else "count")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)
