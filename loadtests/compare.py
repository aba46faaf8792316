"""Two load-test runs side by side: the same metrics of each summary and the ratio B / A.

Used by ``genmedia loadtest compare A B`` (rich table + Markdown) and by anything that
compares a simulated run with a real one; works on ``summary.json`` dicts only.
"""

from __future__ import annotations

from dataclasses import dataclass

from genmedia.loadtests.report import CLASSES, PERCENTILES


@dataclass(frozen=True)
class Row:
    """One metric of both runs."""

    metric: str
    a: float | None
    b: float | None

    @property
    def ratio(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return self.b / self.a


def _get(summary: dict, *path: str) -> float | None:
    node: object = summary
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return float(node) if isinstance(node, int | float) else None


def _group_metrics(prefix: tuple[str, ...], label: str) -> list[tuple[str, tuple[str, ...]]]:
    out = [
        (f"{label} throughput (img/s)", (*prefix, "throughput_images_per_s")),
        (f"{label} goodput (img/s)", (*prefix, "goodput_images_per_s")),
        (f"{label} SLO attainment", (*prefix, "slo_attainment")),
    ]
    for kind, name in (("latency_s", "e2e"), ("queue_wait_s", "queue")):
        out += [(f"{label} {name} p{p} (s)", (*prefix, kind, f"p{p}")) for p in PERCENTILES]
    return out


def metrics(a: dict, b: dict) -> list[tuple[str, tuple[str, ...]]]:
    """The metrics compared: overall, then per class and per model present in either run."""
    out = [
        *_group_metrics(("overall",), "all"),
        ("all 429 rate", ("overall", "rate_429")),
        ("all error rate", ("overall", "error_rate")),
        ("compute s / image", ("compute_s_per_image",)),
    ]
    for key in sorted(set(a.get("fairness", {})) | set(b.get("fairness", {}))):
        out.append((f"fairness {key}", ("fairness", key)))
    classes = [c for c in CLASSES if c in a.get("classes", {}) or c in b.get("classes", {})]
    for cls in classes:
        out += _group_metrics(("classes", cls), cls)
    for model in sorted(set(a.get("models", {})) | set(b.get("models", {}))):
        out += _group_metrics(("models", model), model)[:3]
        out.append((f"{model} e2e p99 (s)", ("models", model, "latency_s", "p99")))
    return out


def compare(a: dict, b: dict) -> list[Row]:
    """Every metric of two summaries with its ratio B / A."""
    return [Row(name, _get(a, *path), _get(b, *path)) for name, path in metrics(a, b)]


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def compare_markdown(rows: list[Row], a_name: str, b_name: str) -> str:
    lines = [
        f"# Load-test comparison: A = {a_name}, B = {b_name}",
        "",
        "| metric | A | B | B / A |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.metric} | {_fmt(r.a)} | {_fmt(r.b)} | {_fmt(r.ratio)} |" for r in rows]
    return "\n".join(lines) + "\n"
