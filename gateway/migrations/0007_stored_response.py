# Stored responses (issue 14): one document per /v1/responses answer.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gateway', '0006_upstream_kind_azure'),
        ('keys', '0006_response_storage'),
    ]

    operations = [
        migrations.CreateModel(
            name='StoredResponse',
            fields=[
                ('id', models.CharField(max_length=100, primary_key=True, serialize=False)),
                ('created_at', models.DateTimeField()),
                ('expires_at', models.DateTimeField(db_index=True)),
                ('status', models.CharField(max_length=16)),
                ('model', models.CharField(blank=True, max_length=200)),
                ('background', models.BooleanField(default=False)),
                ('previous_response_id', models.CharField(blank=True, max_length=100, null=True)),
                ('ancestors', models.JSONField(blank=True, default=list)),
                ('context_bytes', models.PositiveBigIntegerField(default=0)),
                ('request', models.JSONField(blank=True, default=dict)),
                ('input_items', models.JSONField(blank=True, default=list)),
                ('response', models.JSONField(blank=True, default=dict)),
                ('events', models.JSONField(blank=True, null=True)),
                ('credential', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='gateway.credential')),
                ('key', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='keys.apikey')),
                ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='stored_responses', to='keys.tenant')),
                ('upstream', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='gateway.upstream')),
            ],
            options={
                'indexes': [models.Index(fields=['tenant', 'created_at'], name='storedresp_tenant_time')],
            },
        ),
    ]
