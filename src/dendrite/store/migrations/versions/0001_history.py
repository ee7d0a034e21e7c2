"""Raw execution history: goals, tool calls, routing, feedback, solutions, tool creations.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("goal_id", sa.String(length=64), nullable=False),
        sa.Column("goal_text", sa.Text(), nullable=False),
        sa.Column("intent", sa.String(length=64), nullable=True),
        sa.Column("query_type", sa.String(length=64), nullable=True),
        sa.Column("task_type", sa.String(length=128), nullable=True),
        sa.Column("project", sa.String(length=255), nullable=True),
        sa.Column("session_id", sa.String(length=128), nullable=True),
        sa.Column("parent_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_type", sa.String(length=32), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("model_tier", sa.String(length=64), nullable=True),
        sa.Column("pool", sa.String(length=128), nullable=True),
        sa.Column("routing_confidence", sa.Float(), nullable=True),
        sa.Column("complexity_score", sa.Float(), nullable=True),
        sa.Column("confidence_score", sa.Float(), nullable=True),
        sa.Column("estimated_tokens", sa.BigInteger(), nullable=True),
        sa.Column("tokens_used", sa.BigInteger(), nullable=True),
        sa.Column("estimated_duration_ms", sa.Float(), nullable=True),
        sa.Column("cost_estimate", sa.Float(), nullable=True),
        sa.Column("actual_cost", sa.Float(), nullable=True),
        sa.Column("quality_score", sa.Float(), nullable=True),
        sa.Column("user_accepted", sa.Boolean(), nullable=True),
        sa.Column("user_rating", sa.Integer(), nullable=True),
        sa.Column("peak_memory_mb", sa.Float(), nullable=True),
        sa.Column("cpu_time_ms", sa.Float(), nullable=True),
        sa.Column("solution_summary", sa.Text(), nullable=True),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executions")),
        sa.UniqueConstraint("goal_id", name=op.f("uq_executions_goal_id")),
    )
    op.create_index(
        op.f("ix_executions_intent_started_at"),
        "executions",
        ["intent", "started_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_executions_model_tier_success_started_at"),
        "executions",
        ["model_tier", "success", "started_at"],
        unique=False,
    )
    op.create_index(op.f("ix_executions_parent_id"), "executions", ["parent_id"], unique=False)
    op.create_index(
        op.f("ix_executions_pool_success_duration_ms"),
        "executions",
        ["pool", "success", "duration_ms"],
        unique=False,
    )
    op.create_index(
        op.f("ix_executions_project_quality_score_started_at"),
        "executions",
        ["project", "quality_score", "started_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_executions_project_task_type_started_at"),
        "executions",
        ["project", "task_type", "started_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_executions_session_id_started_at"),
        "executions",
        ["session_id", "started_at"],
        unique=False,
    )
    op.create_index(op.f("ix_executions_started_at"), "executions", ["started_at"], unique=False)

    op.create_table(
        "routing_decisions",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("execution_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("router", sa.String(length=64), nullable=False),
        sa.Column("chosen", sa.String(length=128), nullable=False),
        sa.Column(
            "candidates",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "features",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("predicted_success", sa.Float(), nullable=True),
        sa.Column("predicted_cost", sa.Float(), nullable=True),
        sa.Column("predicted_duration_ms", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_decisions")),
    )
    op.create_index(
        op.f("ix_routing_decisions_execution_id"),
        "routing_decisions",
        ["execution_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_routing_decisions_router_created_at"),
        "routing_decisions",
        ["router", "created_at"],
        unique=False,
    )

    op.create_table(
        "solutions",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("execution_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("pattern", sa.String(length=512), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("query_type", sa.String(length=64), nullable=True),
        sa.Column("task_type", sa.String(length=128), nullable=True),
        sa.Column(
            "plan",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("quality_score", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_solutions")),
    )
    op.create_index(op.f("ix_solutions_pattern"), "solutions", ["pattern"], unique=False)
    op.create_index(
        op.f("ix_solutions_query_type_created_at"),
        "solutions",
        ["query_type", "created_at"],
        unique=False,
    )

    op.create_table(
        "store_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("int_value", sa.BigInteger(), nullable=True),
        sa.Column("text_value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_store_meta")),
    )
    op.create_table(
        "tool_creation_events",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("tool_name", sa.String(length=200), nullable=False),
        sa.Column("goal_text", sa.Text(), nullable=True),
        sa.Column("generated_code", sa.Text(), nullable=False),
        sa.Column("validation_passed", sa.Boolean(), nullable=False),
        sa.Column(
            "validation_errors",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("execution_id", sa.Uuid(as_uuid=False), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tool_creation_events")),
    )
    op.create_index(
        op.f("ix_tool_creation_events_tool_name_created_at"),
        "tool_creation_events",
        ["tool_name", "created_at"],
        unique=False,
    )

    op.create_table(
        "tool_executions",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("execution_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("step_id", sa.String(length=128), nullable=True),
        sa.Column("tool_name", sa.String(length=200), nullable=False),
        sa.Column(
            "parameters",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("result_truncated", sa.Boolean(), nullable=False),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_type", sa.String(length=32), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("fallback_of", sa.String(length=200), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tool_executions")),
    )
    op.create_index(
        op.f("ix_tool_executions_execution_id"), "tool_executions", ["execution_id"], unique=False
    )
    op.create_index(
        op.f("ix_tool_executions_started_at"), "tool_executions", ["started_at"], unique=False
    )
    op.create_index(
        op.f("ix_tool_executions_tool_name_started_at"),
        "tool_executions",
        ["tool_name", "started_at"],
        unique=False,
    )

    op.create_table(
        "execution_feedback",
        sa.Column("id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("execution_id", sa.Uuid(as_uuid=False), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("accepted", sa.Boolean(), nullable=True),
        sa.Column("feedback_text", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["executions.id"],
            name=op.f("fk_execution_feedback_execution_id_executions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_feedback")),
    )
    op.create_index(
        op.f("ix_execution_feedback_execution_id"),
        "execution_feedback",
        ["execution_id"],
        unique=False,
    )

    op.bulk_insert(
        sa.table("store_meta", sa.column("key", sa.String), sa.column("int_value", sa.BigInteger)),
        [{"key": "goal_seq", "int_value": 0}],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_execution_feedback_execution_id"), table_name="execution_feedback")

    op.drop_table("execution_feedback")
    op.drop_index(op.f("ix_tool_executions_tool_name_started_at"), table_name="tool_executions")
    op.drop_index(op.f("ix_tool_executions_started_at"), table_name="tool_executions")
    op.drop_index(op.f("ix_tool_executions_execution_id"), table_name="tool_executions")

    op.drop_table("tool_executions")
    op.drop_index(
        op.f("ix_tool_creation_events_tool_name_created_at"), table_name="tool_creation_events"
    )

    op.drop_table("tool_creation_events")
    op.drop_table("store_meta")
    op.drop_index(op.f("ix_solutions_query_type_created_at"), table_name="solutions")
    op.drop_index(op.f("ix_solutions_pattern"), table_name="solutions")

    op.drop_table("solutions")
    op.drop_index(op.f("ix_routing_decisions_router_created_at"), table_name="routing_decisions")
    op.drop_index(op.f("ix_routing_decisions_execution_id"), table_name="routing_decisions")

    op.drop_table("routing_decisions")
    op.drop_index(op.f("ix_executions_started_at"), table_name="executions")
    op.drop_index(op.f("ix_executions_session_id_started_at"), table_name="executions")
    op.drop_index(op.f("ix_executions_project_task_type_started_at"), table_name="executions")
    op.drop_index(op.f("ix_executions_project_quality_score_started_at"), table_name="executions")
    op.drop_index(op.f("ix_executions_pool_success_duration_ms"), table_name="executions")
    op.drop_index(op.f("ix_executions_parent_id"), table_name="executions")
    op.drop_index(op.f("ix_executions_model_tier_success_started_at"), table_name="executions")
    op.drop_index(op.f("ix_executions_intent_started_at"), table_name="executions")

    op.drop_table("executions")
