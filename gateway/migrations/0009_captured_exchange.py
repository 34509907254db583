# Body capture (issue 15): one request's bodies, captured for debugging.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gateway', '0008_operator_alert'),
        ('keys', '0007_body_capture'),
    ]

    operations = [
        migrations.CreateModel(
            name='CapturedExchange',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('request_id', models.CharField(max_length=64, unique=True)),
                ('created_at', models.DateTimeField(db_index=True)),
                ('method', models.CharField(max_length=16)),
                ('path', models.CharField(max_length=500)),
                ('status', models.PositiveSmallIntegerField(default=0)),
                ('stream', models.BooleanField(default=False)),
                ('request_headers', models.JSONField(blank=True, default=dict)),
                ('request_body', models.TextField(blank=True)),
                ('request_bytes', models.PositiveIntegerField(default=0)),
                ('request_truncated', models.BooleanField(default=False)),
                ('response_body', models.TextField(blank=True)),
                ('response_bytes', models.PositiveBigIntegerField(default=0)),
                ('response_truncated', models.BooleanField(default=False)),
                ('key', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='keys.apikey')),
                ('tenant', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to='keys.tenant')),
            ],
            options={
                'verbose_name': 'captured exchange',
            },
        ),
    ]
