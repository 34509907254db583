# Turnpike gateway image: daphne (uvloop) serving portal.asgi on port 8000.
# Configure with the environment (see README): DATABASE_URL, REDIS_URL, SECRET_KEY, ...
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DJANGO_SETTINGS_MODULE=portal.settings
WORKDIR /app

COPY . .
# Editable install: the code runs from /app, where templates/ and static/ live beside it.
RUN pip install --no-cache-dir -e . \
 && SECRET_KEY=build-only python manage.py collectstatic --noinput \
 && useradd --system --uid 1000 turnpike && chown -R turnpike /app
USER turnpike
EXPOSE 8000
# Run `python manage.py migrate` once per release (a one-off container) before this.
# The same image runs the Celery worker (`celery -A portal worker`) and beat (`celery -A portal beat`).
CMD ["python", "-m", "portal.server", "-b", "0.0.0.0", "-p", "8000", "--proxy-headers"]
