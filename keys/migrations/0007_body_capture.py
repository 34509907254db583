# Body capture settings (issue 15): a tenant's capture window, a key's inherit/on/off override
# with a window of its own.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('keys', '0006_response_storage'),
    ]

    operations = [
        migrations.AddField(
            model_name='apikey',
            name='capture_bodies',
            field=models.CharField(choices=[('inherit', 'As the tenant'), ('on', 'On until a time'), ('off', 'Off')], default='inherit', help_text="Capture this key's request and response bodies: as its tenant says, on until the time below, or off.", max_length=8),
        ),
        migrations.AddField(
            model_name='apikey',
            name='capture_bodies_until',
            field=models.DateTimeField(blank=True, help_text='When capture is on for this key: the time it stops.', null=True),
        ),
        migrations.AddField(
            model_name='tenant',
            name='capture_bodies_until',
            field=models.DateTimeField(blank=True, help_text="Capture the request and response bodies of the tenant's keys (those that inherit) until this time, for debugging; empty or past: off. At most 30 days ahead.", null=True),
        ),
    ]
