"""Analytics: additive rollups, their archives for retention, and SQL views over them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


VIEWS = {
    "tool_performance": """
        SELECT tool_name, total_executions, successful_executions, failed_executions,
               success_rate, avg_duration_ms, p95_duration_ms, first_used, last_used
        FROM tool_statistics
    """,
    "tier_performance_daily": """
        SELECT day, model_tier, SUM(executions) AS executions, SUM(successes) AS successes,
               CAST(SUM(successes) AS FLOAT) / SUM(executions) AS success_rate,
               CAST(SUM(duration_us_sum) AS FLOAT) / SUM(executions) / 1000.0 AS avg_duration_ms,
               CAST(SUM(cost_nano_sum) AS FLOAT) / NULLIF(SUM(cost_n), 0) / 1e9 AS avg_cost,
               CAST(SUM(quality_micro_sum) AS FLOAT) / NULLIF(SUM(quality_n), 0) / 1e6
                   AS avg_quality,
               CAST(SUM(rating_sum) AS FLOAT) / NULLIF(SUM(rating_n), 0) AS avg_rating
        FROM execution_rollup WHERE model_tier <> ''
        GROUP BY day, model_tier
    """,
    "pool_performance": """
        SELECT pool, SUM(executions) AS executions, SUM(successes) AS successes,
               CAST(SUM(successes) AS FLOAT) / SUM(executions) AS success_rate,
               CAST(SUM(duration_us_sum) AS FLOAT) / SUM(executions) / 1000.0 AS avg_duration_ms,
               CAST(SUM(cost_nano_sum) AS FLOAT) / NULLIF(SUM(cost_n), 0) / 1e9 AS avg_cost
        FROM execution_rollup WHERE pool <> ''
        GROUP BY pool
    """,
    "solution_patterns": """
        SELECT pattern, query_type, COUNT(*) AS occurrences, AVG(quality_score) AS avg_quality,
               MIN(created_at) AS first_seen, MAX(created_at) AS last_seen
        FROM solutions
        GROUP BY pattern, query_type
    """,
}


def upgrade() -> None:
    op.create_table(
        "execution_rollup",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("intent", sa.String(length=255), nullable=False),
        sa.Column("project", sa.String(length=255), nullable=False),
        sa.Column("task_type", sa.String(length=255), nullable=False),
        sa.Column("model_tier", sa.String(length=255), nullable=False),
        sa.Column("pool", sa.String(length=255), nullable=False),
        sa.Column("executions", sa.BigInteger(), nullable=False),
        sa.Column("successes", sa.BigInteger(), nullable=False),
        sa.Column("duration_us_sum", sa.BigInteger(), nullable=False),
        sa.Column("cost_n", sa.BigInteger(), nullable=False),
        sa.Column("cost_nano_sum", sa.BigInteger(), nullable=False),
        sa.Column("quality_n", sa.BigInteger(), nullable=False),
        sa.Column("quality_micro_sum", sa.BigInteger(), nullable=False),
        sa.Column("confidence_n", sa.BigInteger(), nullable=False),
        sa.Column("confidence_micro_sum", sa.BigInteger(), nullable=False),
        sa.Column("tokens_sum", sa.BigInteger(), nullable=False),
        sa.Column("rating_n", sa.BigInteger(), nullable=False),
        sa.Column("rating_sum", sa.BigInteger(), nullable=False),
        sa.Column("accepted_n", sa.BigInteger(), nullable=False),
        sa.Column("accepted_yes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day",
            "intent",
            "project",
            "task_type",
            "model_tier",
            "pool",
            name=op.f("pk_execution_rollup"),
        ),
    )
    op.create_index(
        op.f("ix_execution_rollup_intent_day"), "execution_rollup", ["intent", "day"], unique=False
    )
    op.create_index(
        op.f("ix_execution_rollup_model_tier_day"),
        "execution_rollup",
        ["model_tier", "day"],
        unique=False,
    )
    op.create_index(op.f("ix_execution_rollup_pool"), "execution_rollup", ["pool"], unique=False)

    op.create_table(
        "execution_rollup_archive",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("intent", sa.String(length=255), nullable=False),
        sa.Column("project", sa.String(length=255), nullable=False),
        sa.Column("task_type", sa.String(length=255), nullable=False),
        sa.Column("model_tier", sa.String(length=255), nullable=False),
        sa.Column("pool", sa.String(length=255), nullable=False),
        sa.Column("executions", sa.BigInteger(), nullable=False),
        sa.Column("successes", sa.BigInteger(), nullable=False),
        sa.Column("duration_us_sum", sa.BigInteger(), nullable=False),
        sa.Column("cost_n", sa.BigInteger(), nullable=False),
        sa.Column("cost_nano_sum", sa.BigInteger(), nullable=False),
        sa.Column("quality_n", sa.BigInteger(), nullable=False),
        sa.Column("quality_micro_sum", sa.BigInteger(), nullable=False),
        sa.Column("confidence_n", sa.BigInteger(), nullable=False),
        sa.Column("confidence_micro_sum", sa.BigInteger(), nullable=False),
        sa.Column("tokens_sum", sa.BigInteger(), nullable=False),
        sa.Column("rating_n", sa.BigInteger(), nullable=False),
        sa.Column("rating_sum", sa.BigInteger(), nullable=False),
        sa.Column("accepted_n", sa.BigInteger(), nullable=False),
        sa.Column("accepted_yes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day",
            "intent",
            "project",
            "task_type",
            "model_tier",
            "pool",
            name=op.f("pk_execution_rollup_archive"),
        ),
    )
    op.create_table(
        "tool_duration_histogram",
        sa.Column("tool_name", sa.String(length=200), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tool_name", "bucket", name=op.f("pk_tool_duration_histogram")),
    )
    op.create_table(
        "tool_duration_histogram_archive",
        sa.Column("tool_name", sa.String(length=200), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "tool_name", "bucket", name=op.f("pk_tool_duration_histogram_archive")
        ),
    )
    op.create_table(
        "tool_statistics",
        sa.Column("tool_name", sa.String(length=200), nullable=False),
        sa.Column("total_executions", sa.BigInteger(), nullable=False),
        sa.Column("successful_executions", sa.BigInteger(), nullable=False),
        sa.Column("failed_executions", sa.BigInteger(), nullable=False),
        sa.Column("duration_us_sum", sa.BigInteger(), nullable=False),
        sa.Column("first_used", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used", sa.DateTime(timezone=True), nullable=True),
        sa.Column("success_rate", sa.Float(), nullable=False),
        sa.Column("avg_duration_ms", sa.Float(), nullable=False),
        sa.Column("p95_duration_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tool_name", name=op.f("pk_tool_statistics")),
    )
    op.create_index(
        op.f("ix_tool_statistics_success_rate_total_executions"),
        "tool_statistics",
        ["success_rate", "total_executions"],
        unique=False,
    )

    op.create_table(
        "tool_statistics_archive",
        sa.Column("tool_name", sa.String(length=200), nullable=False),
        sa.Column("total_executions", sa.BigInteger(), nullable=False),
        sa.Column("successful_executions", sa.BigInteger(), nullable=False),
        sa.Column("failed_executions", sa.BigInteger(), nullable=False),
        sa.Column("duration_us_sum", sa.BigInteger(), nullable=False),
        sa.Column("first_used", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tool_name", name=op.f("pk_tool_statistics_archive")),
    )
    for name, query in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_table("tool_statistics_archive")
    op.drop_index(
        op.f("ix_tool_statistics_success_rate_total_executions"), table_name="tool_statistics"
    )

    op.drop_table("tool_statistics")
    op.drop_table("tool_duration_histogram_archive")
    op.drop_table("tool_duration_histogram")
    op.drop_table("execution_rollup_archive")
    op.drop_index(op.f("ix_execution_rollup_pool"), table_name="execution_rollup")
    op.drop_index(op.f("ix_execution_rollup_model_tier_day"), table_name="execution_rollup")
    op.drop_index(op.f("ix_execution_rollup_intent_day"), table_name="execution_rollup")

    op.drop_table("execution_rollup")
