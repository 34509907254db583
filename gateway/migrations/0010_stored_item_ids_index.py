"""A GIN index over the ids of every stored response's items (input and output), so an
``item_reference`` is resolved from the database with one index probe
(``gateway.stored.store.load_item_owners``). PostgreSQL only (the embedded SQLite default
scans its few rows); built CONCURRENTLY, so a large store keeps taking writes meanwhile."""

from django.db import migrations

INDEX = "storedresp_item_ids"
# gateway.stored.store.ITEM_IDS_SQL, which the look-up must spell the same (an input
# item_reference names another response's item: not indexed as this one's).
EXPRESSION = ("""(jsonb_path_query_array(input_items, '$[*] ? (!exists(@.type) || """
              """@.type != "item_reference").id') || """
              "jsonb_path_query_array(response, '$.output[*].id'))")


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON "
                              f"gateway_storedresponse USING gin ({EXPRESSION})")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("gateway", "0009_captured_exchange")]

    operations = [migrations.RunPython(create, drop)]
