# Response storage settings (issue 14): per tenant (on/off, retention) and per key (inherit/on/off).

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('keys', '0005_apikey_tenant_newest'),
    ]

    operations = [
        migrations.AddField(
            model_name='apikey',
            name='response_storage',
            field=models.CharField(choices=[('inherit', 'As the tenant'), ('on', 'On'), ('off', 'Off (zero data retention)')], default='inherit', help_text="Store this key's /v1/responses answers: as its tenant says, or on/off for this key alone (the tenant's retention period applies).", max_length=8),
        ),
        migrations.AddField(
            model_name='tenant',
            name='response_retention_days',
            field=models.PositiveIntegerField(default=30, help_text='Days a stored response is kept before it is deleted.', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(3650)]),
        ),
        migrations.AddField(
            model_name='tenant',
            name='response_storage',
            field=models.CharField(choices=[('on', 'On'), ('off', 'Off (zero data retention)')], default='on', help_text='Store /v1/responses answers (for previous_response_id and GET /v1/responses/{id}); off: zero data retention, nothing of a conversation is kept.', max_length=8),
        ),
    ]
