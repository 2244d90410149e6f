"""Run the Great Expectations suites of `data_contracts/` on Arrow tables.

Validation fails closed: a failed expectation, or a suite that evaluated nothing, raises
`ContractViolation` naming the expectations and the rows (by key) that broke them.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from data_contracts.suites import Suite

log = logging.getLogger(__name__)

_SAMPLE_ROWS = 5


@dataclass
class Failure:
    expectation: str
    column: str | None
    unexpected_count: int
    rows: list[str]  # a sample, by key
    indexes: list[int] = field(default_factory=list, repr=False)  # every failing row's position
    observed: Any = None  # what a whole-table expectation measured

    def __str__(self) -> str:
        where = f" on column {self.column!r}" if self.column else ""
        if not self.unexpected_count and self.observed is not None:
            return f"{self.expectation}{where} failed: observed {self.observed}"
        rows = f"; rows: {', '.join(self.rows)}" if self.rows else ""
        return f"{self.expectation}{where} failed for {self.unexpected_count} row(s){rows}"


@dataclass
class ValidationReport:
    suite: str
    rows: int
    evaluated: int
    failures: list[Failure] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.evaluated > 0 and not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "rows": self.rows,
            "evaluated": self.evaluated,
            "success": self.success,
            "failures": [{k: v for k, v in f.__dict__.items() if k != "indexes"} for f in self.failures],
        }


class ContractViolation(Exception):
    """Data broke a contract; nothing was written."""

    def __init__(self, report: ValidationReport):
        self.report = report
        lines = [str(f) for f in report.failures] or ["the suite evaluated zero expectations"]
        super().__init__(
            f"data contract {report.suite!r} failed on {report.rows} row(s), nothing was written:\n  - "
            + "\n  - ".join(lines)
        )


@functools.lru_cache(maxsize=1)
def _context() -> Any:
    # Imported here: importing GX costs ~4 s, only runs that validate pay it.
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX gives some of its module loggers an explicit INFO level: quiet every one of them.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("great_expectations")] + ["great_expectations"]:
        logging.getLogger(name).setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _with_vector_checks(table: pa.Table) -> pa.Table:
    """Replace the vector column by the derived columns the chunk suite checks."""
    if "vector" not in table.column_names:
        return table
    column = table.column("vector").combine_chunks()
    dimension = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    vectors = flat.reshape(len(table), dimension) if len(table) else np.zeros((0, dimension))
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0.0), axis=1)
    table = table.drop_columns(["vector"])
    table = table.append_column("vector_dim", pa.array(np.full(len(table), dimension, dtype=np.int64)))
    table = table.append_column("vector_norm", pa.array(norms))
    return table.append_column("vector_finite", pa.array(finite))


def validate(table: pa.Table, suite: Suite, key: str) -> ValidationReport:
    """Validate `table` against `suite`; failures name rows by their `key` column."""
    import great_expectations as gx

    context = _context()
    frame = _with_vector_checks(table).to_pandas()
    name = suite["name"]
    # Fresh names per call: the ephemeral context keeps what was added to it.
    run_id = f"{name}-{id(frame)}"
    batch = (
        context.data_sources.add_or_update_pandas(f"ragtune-{run_id}")
        .add_dataframe_asset(run_id)
        .add_batch_definition_whole_dataframe("all")
    )
    gx_suite = context.suites.add(gx.ExpectationSuite(**{**suite, "name": run_id}))
    definition = context.validation_definitions.add(gx.ValidationDefinition(data=batch, suite=gx_suite, name=run_id))
    try:
        result = definition.run(
            batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"}
        )
    finally:
        context.validation_definitions.delete(run_id)
        context.suites.delete(run_id)
        context.data_sources.delete(f"ragtune-{run_id}")

    report = ValidationReport(suite=name, rows=len(frame), evaluated=result.statistics["evaluated_expectations"])
    keys = frame[key].tolist() if key in frame.columns else []
    for r in result.results:
        if r.success:
            continue
        kwargs = r.expectation_config.kwargs
        indexes = (r.result or {}).get("unexpected_index_list") or []
        raised = (r.exception_info or {}).get("exception_message")
        count = (r.result or {}).get("unexpected_count") or len(indexes)
        rows = [str(keys[i]) for i in indexes[:_SAMPLE_ROWS] if isinstance(i, int) and i < len(keys)]
        if raised:
            rows.append(f"error: {raised}")
        report.failures.append(
            Failure(
                expectation=r.expectation_config.type,
                column=kwargs.get("column") or ",".join(kwargs.get("column_list") or []) or None,
                unexpected_count=int(count),
                rows=rows,
                indexes=[i for i in indexes if isinstance(i, int)],
                observed=(r.result or {}).get("observed_value"),
            )
        )
    log.info("contract %s: %d rows, %d expectations, %d failed", name, report.rows, report.evaluated, len(report.failures))
    return report


def require_valid(table: pa.Table, suite: Suite, key: str) -> ValidationReport:
    """Validate and raise `ContractViolation` unless every expectation passed."""
    report = validate(table, suite, key)
    if not report.success:
        raise ContractViolation(report)
    return report
