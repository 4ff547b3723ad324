"""The read-only web dashboard served by ``crev ingest run`` (FastAPI).

The page (``static/``) uses only the JSON API under ``/api/v1``, which is
described by ``/api/v1/openapi.json``. Every request needs the operator
token: as ``Authorization: Bearer TOKEN``, or as the cookie ``/login`` sets
for the browser.
"""
