"""Baseline: exactly the schema `Base.metadata.create_all` made before migrations existed (a database
created that way is stamped at this revision by `core.db.init_db`, then upgraded).

Revision ID: 0001
Revises: 
Create Date: 2026-12-02 00:44:50.082740
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('aggregates',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant', sa.String(length=200), nullable=False),
    sa.Column('service', sa.String(length=200), nullable=False),
    sa.Column('region', sa.String(length=200), nullable=False),
    sa.Column('gpu_model', sa.String(length=200), nullable=False),
    sa.Column('window_start', sa.Integer(), nullable=False),
    sa.Column('window_end', sa.Integer(), nullable=False),
    sa.Column('window_s', sa.Integer(), nullable=False),
    sa.Column('spend_usd', sa.Float(), nullable=False),
    sa.Column('spend_rate_usd_h', sa.Float(), nullable=False),
    sa.Column('gpu_seconds', sa.Float(), nullable=False),
    sa.Column('util_avg', sa.Float(), nullable=False),
    sa.Column('idle_usd', sa.Float(), nullable=False),
    sa.Column('events', sa.Integer(), nullable=False),
    sa.Column('tokens', sa.Integer(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('fallback_priced_events', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant', 'service', 'region', 'gpu_model', 'window_s', 'window_start', name='uq_aggregate_window')
    )
    with op.batch_alter_table('aggregates', schema=None) as batch_op:
        batch_op.create_index('ix_aggregates_tenant_time', ['tenant', 'window_start'], unique=False)
        batch_op.create_index('ix_aggregates_time', ['window_start'], unique=False)

    op.create_table('alert_rules',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant', sa.String(length=200), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('published_version', sa.Integer(), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('alert_rules', schema=None) as batch_op:
        batch_op.create_index('ix_alert_rules_tenant', ['tenant'], unique=False)

    op.create_table('api_keys',
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('key_sha256', sa.String(length=64), nullable=False),
    sa.Column('tenant', sa.String(length=200), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key_id')
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_tenant'), ['tenant'], unique=False)

    op.create_table('benchmark_runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=50), nullable=False),
    sa.Column('gpu_model', sa.String(length=100), nullable=False),
    sa.Column('device', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('params', sa.Integer(), nullable=False),
    sa.Column('variant', sa.String(length=200), nullable=False),
    sa.Column('precision', sa.String(length=20), nullable=False),
    sa.Column('quantization', sa.String(length=50), nullable=False),
    sa.Column('kv_cache', sa.String(length=20), nullable=False),
    sa.Column('window', sa.Integer(), nullable=True),
    sa.Column('decode_mode', sa.String(length=50), nullable=False),
    sa.Column('batch_size', sa.Integer(), nullable=False),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('new_tokens', sa.Integer(), nullable=False),
    sa.Column('tokens_per_s', sa.Float(), nullable=False),
    sa.Column('decode_tokens_per_s', sa.Float(), nullable=True),
    sa.Column('requests_per_s', sa.Float(), nullable=False),
    sa.Column('latency_p50_ms', sa.Float(), nullable=False),
    sa.Column('latency_p95_ms', sa.Float(), nullable=False),
    sa.Column('latency_p99_ms', sa.Float(), nullable=False),
    sa.Column('ttft_p50_ms', sa.Float(), nullable=False),
    sa.Column('peak_memory_bytes', sa.Integer(), nullable=False),
    sa.Column('peak_memory_source', sa.String(length=30), nullable=False),
    sa.Column('model_bytes', sa.Integer(), nullable=False),
    sa.Column('kv_cache_bytes', sa.Integer(), nullable=False),
    sa.Column('bandwidth_share', sa.Float(), nullable=True),
    sa.Column('accepted', sa.Boolean(), nullable=True),
    sa.Column('top1_agreement', sa.Float(), nullable=True),
    sa.Column('ppl_increase', sa.Float(), nullable=True),
    sa.Column('usd_per_gpu_hour', sa.Float(), nullable=True),
    sa.Column('cost_per_million_tokens_usd', sa.Float(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('benchmark_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_benchmark_runs_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_benchmark_runs_gpu_model'), ['gpu_model'], unique=False)
        batch_op.create_index('ix_benchmark_runs_gpu_variant', ['gpu_model', 'variant'], unique=False)

    op.create_table('billed_line_items',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant', sa.String(length=200), nullable=False),
    sa.Column('service', sa.String(length=200), nullable=False),
    sa.Column('cloud', sa.String(length=200), nullable=False),
    sa.Column('region', sa.String(length=200), nullable=False),
    sa.Column('instance_type', sa.String(length=200), nullable=False),
    sa.Column('instance_id', sa.String(length=200), nullable=False),
    sa.Column('gpu_model', sa.String(length=200), nullable=False),
    sa.Column('gpu_count', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.Integer(), nullable=False),
    sa.Column('period_end', sa.Integer(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.Column('pricing', sa.String(length=20), nullable=False),
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cloud', 'instance_id', 'period_start', 'source', name='uq_billed_line_item')
    )
    with op.batch_alter_table('billed_line_items', schema=None) as batch_op:
        batch_op.create_index('ix_billed_tenant_period', ['tenant', 'period_start'], unique=False)

    op.create_table('pricing_overrides',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('cloud', sa.String(length=64), nullable=False),
    sa.Column('region', sa.String(length=64), nullable=False),
    sa.Column('instance_type', sa.String(length=128), nullable=False),
    sa.Column('gpu_model', sa.String(length=64), nullable=False),
    sa.Column('gpu_count', sa.Integer(), nullable=False),
    sa.Column('gpu_mem_gb', sa.Float(), nullable=False),
    sa.Column('on_demand_usd_h', sa.Float(), nullable=False),
    sa.Column('spot_usd_h', sa.Float(), nullable=True),
    sa.Column('note', sa.String(length=512), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('cloud', 'region', 'instance_type', name='uq_price_override_key')
    )
    with op.batch_alter_table('pricing_overrides', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pricing_overrides_cloud'), ['cloud'], unique=False)

    op.create_table('recommendations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tenant', sa.String(length=200), nullable=True),
    sa.Column('service', sa.String(length=200), nullable=True),
    sa.Column('workload', sa.JSON(), nullable=False),
    sa.Column('best_instance', sa.String(length=300), nullable=True),
    sa.Column('best_usd_per_million_tokens', sa.Float(), nullable=True),
    sa.Column('best_usd_per_hour', sa.Float(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('recommendations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recommendations_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_recommendations_tenant'), ['tenant'], unique=False)

    op.create_table('webhooks',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant', sa.String(length=200), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.Column('rule_ids', sa.JSON(), nullable=True),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('secret', sa.String(length=200), nullable=False),
    sa.Column('previous_secret', sa.String(length=200), nullable=True),
    sa.Column('previous_secret_expires_at', sa.Float(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.create_index('ix_webhooks_tenant', ['tenant'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('webhook_id', sa.String(length=32), nullable=False),
    sa.Column('tenant', sa.String(length=200), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('starts_at', sa.Float(), nullable=False),
    sa.Column('alert', sa.JSON(), nullable=False),
    sa.Column('msg_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=False),
    sa.Column('lease_until', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('delivered_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['webhook_id'], ['webhooks.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('webhook_id', 'fingerprint', 'state', 'starts_at', name='uq_delivery_transition')
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_deliveries_tenant', ['tenant', 'created_at'], unique=False)

    op.create_table('webhook_delivery_attempts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('delivery_id', sa.String(length=32), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('duration_ms', sa.Float(), nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['delivery_id'], ['webhook_deliveries.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_delivery_attempts', schema=None) as batch_op:
        batch_op.create_index('ix_attempts_delivery', ['delivery_id', 'attempt'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('webhook_delivery_attempts', schema=None) as batch_op:
        batch_op.drop_index('ix_attempts_delivery')

    op.drop_table('webhook_delivery_attempts')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_tenant')
        batch_op.drop_index('ix_deliveries_due')

    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('webhooks', schema=None) as batch_op:
        batch_op.drop_index('ix_webhooks_tenant')

    op.drop_table('webhooks')
    with op.batch_alter_table('recommendations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recommendations_tenant'))
        batch_op.drop_index(batch_op.f('ix_recommendations_created_at'))

    op.drop_table('recommendations')
    with op.batch_alter_table('pricing_overrides', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pricing_overrides_cloud'))

    op.drop_table('pricing_overrides')
    with op.batch_alter_table('billed_line_items', schema=None) as batch_op:
        batch_op.drop_index('ix_billed_tenant_period')

    op.drop_table('billed_line_items')
    with op.batch_alter_table('benchmark_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_benchmark_runs_gpu_variant')
        batch_op.drop_index(batch_op.f('ix_benchmark_runs_gpu_model'))
        batch_op.drop_index(batch_op.f('ix_benchmark_runs_created_at'))

    op.drop_table('benchmark_runs')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_tenant'))

    op.drop_table('api_keys')
    with op.batch_alter_table('alert_rules', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_rules_tenant')

    op.drop_table('alert_rules')
    with op.batch_alter_table('aggregates', schema=None) as batch_op:
        batch_op.drop_index('ix_aggregates_time')
        batch_op.drop_index('ix_aggregates_tenant_time')

    op.drop_table('aggregates')
