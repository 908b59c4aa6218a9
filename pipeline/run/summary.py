"""The texts a run writes into `summary.md` and its log: data, unreadable images, the closing report."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from ...features.inputs import ImageDataset
from ...features.store import FeatureStore
from ..advice import Advice, advice_text
from ..config import DataConfig
from ..results import compact_table, write_summary
from ..tables import format_table

__all__ = ["data_text", "flagged", "log_report", "skipped_text", "stored_skipped",
           "untested_text", "write_run_summary"]

MAX_SKIPPED_LISTED = 20
def untested_text(untested: list[str], split: dict) -> str:
    return (
        f"class(es) {untested} have no images in the test split {split['test_split']!r}: the test scores "
        f"measure the other classes only (the classifiers still learn and predict them)."
    )


def data_text(data: DataConfig, dataset: ImageDataset, split: dict, untested: list[str]) -> str:
    made = f" (made: stratified, test_size {split['test_size']}, seed {split['seed']})" if split["made"] else ""
    text = (
        f"`{data.path}`: {len(dataset)} images, classes {list(dataset.class_names)}; "
        f"train split {split['train_split']!r}, test split {split['test_split']!r}{made}."
    )
    return f"{text} Note: {untested_text(untested, split)}" if untested else text


def skipped_text(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return "None: every image decoded."
    lines = [f"{len(skipped)} image(s) could not be decoded and were left out:", ""]
    lines += [f"- `{sample_id}`: {reason}" for sample_id, reason in skipped[:MAX_SKIPPED_LISTED]]
    if len(skipped) > MAX_SKIPPED_LISTED:
        lines.append(f"- ... and {len(skipped) - MAX_SKIPPED_LISTED} more (`layerprobe store info` lists them all)")
    return "\n".join(lines)


def stored_skipped(store: FeatureStore, rows: list[dict]) -> dict[str, str]:
    """Unreadable images recorded in the store entries of `rows` that the store still holds."""
    entries = {row["store_entry"] for row in rows if isinstance(row.get("store_entry"), str)}
    held = entries & {entry["entry"] for entry in store.entries()}
    return {sample_id: reason for entry in held for sample_id, reason in store.info(entry)["skipped"]}


def flagged(frame: pd.DataFrame, advice: Advice) -> pd.DataFrame:
    """The table to show: with a `flag` column naming the rows at or below the majority class, when there are any."""
    if not advice.flags:
        return frame
    return frame.assign(flag=[advice.flags.get(index, "") for index in frame.index])


def write_run_summary(
    out: Path,
    frame: pd.DataFrame,
    *,
    source: str,
    advice: Advice,
    data: str,
    skipped: list[tuple[str, str]],
    results_path: Path,
    plot_path: Path,
    next_steps: str,
) -> Path:
    """Write `out/summary.md`: the plot and results table, the recommendation (three lines and the evidence), the
    data, unreadable images, files, the details of the recommendation, and last the next steps
    (`recommended.write_recommended`: how to use the recommended model)."""
    words = advice_text(advice)
    return write_summary(
        out / "summary.md",
        flagged(frame, advice),
        title=f"layerprobe run: {source}",
        sections={
            "Recommendation": words.text,  # three short lines (what, test score, why), then the evidence
            "Data": data,
            "Unreadable images": skipped_text(skipped),
            "Files": (
                f"- results: `{results_path}`\n- plot: `{plot_path}`\n- models and predictions: `{out / 'models'}`"
            ),
            "Details": words.details_text,
            "Next steps": next_steps,
        },
        plot=plot_path,
    )


def log_report(
    log: Callable[[str], None],
    frame: pd.DataFrame,
    advice: Advice,
    *,
    n_skipped: int,
    counts: str,
    paths: dict[str, Path],
    next_steps: str,
) -> None:
    """The closing lines of a run: the table, the recommendation, the counts, where the files are, the next steps."""
    log("")
    log(format_table(*compact_table(flagged(frame, advice)), markdown=True))
    log("")
    log(advice_text(advice).text)
    if n_skipped:
        log(f"{n_skipped} unreadable image(s) left out (listed in summary.md).")
    width = max(map(len, paths)) + 1
    log(f"\n{counts}\n" + "\n".join(f"{f'{name}:':{width}} {path}" for name, path in paths.items()))
    log("")
    log(next_steps)
