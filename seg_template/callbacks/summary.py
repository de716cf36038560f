"""The model summary printed when fit starts: Lightning's, without a FLOPs column of zeros.

Lightning counts FLOPs only when the module has an ``example_input_array`` (a forward pass at start-up), so
for ours its table showed a FLOPs column of 0 and "Total FLOPs: 0". :class:`ModelSummary` prints every
column Lightning gathered and the totals, and leaves FLOPs out when nothing was counted. Real forward
GFLOPs per image: ``python scripts/bench_models.py``.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import RichModelSummary
from pytorch_lightning.utilities.model_summary import get_formatted_model_size, get_human_readable_count


class ModelSummary(RichModelSummary):
    """``RichModelSummary`` (``max_depth`` levels of submodules) whose table drops an all-zero FLOPs column."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs" or total_flops]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name or " ", justify="left" if name in ("Name", "Type", "Mode", "") else "right",
                             style="dim" if not name else None, no_wrap=name == "Name")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        totals = [("Trainable params", get_human_readable_count(int(trainable_parameters))),
                  ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
                  ("Total params", get_human_readable_count(int(total_parameters))),
                  ("Total estimated model params size (MB)", get_formatted_model_size(model_size)),
                  ("Modules in train mode", str(total_training_modes.get("train", 0))),
                  ("Modules in eval mode", str(total_training_modes.get("eval", 0)))]
        if total_flops:
            totals.append(("Total FLOPs", get_human_readable_count(int(total_flops))))
        console = get_console()
        console.print(table)
        grid = Table.grid(expand=True)
        grid.add_column()
        for label, value in totals:
            grid.add_row(f"[bold]{label}[/]: {value}")
        console.print(grid)
